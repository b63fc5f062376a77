"""The Clix sandbox server, exercised with a real httpx client over a real socket."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

SANDBOX_PATH = Path(__file__).resolve().parents[2] / "worker" / "sandbox"
PROJECT = "proj-test"
SECRET = "sk-test-Zq9-very-secret"


def _load_sandbox() -> ModuleType:
    # Loaded by path so the test needs neither worker/__init__.py nor the Celery app.
    spec = importlib.util.spec_from_file_location(
        "clix_sandbox_under_test",
        SANDBOX_PATH / "__init__.py",
        submodule_search_locations=[str(SANDBOX_PATH)],
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks the module up while building the class
    spec.loader.exec_module(module)
    return module


sandbox = _load_sandbox()
AUTH = {"X-Clix-Project-ID": PROJECT, "X-Clix-API-Key": SECRET}


@pytest.fixture
def server() -> Iterator[Any]:
    with sandbox.run_in_thread(sandbox.SandboxConfig(project_id=PROJECT, api_key=SECRET)) as srv:
        yield srv


@pytest.fixture
def client(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0) as c:
        yield c


def trigger(client: httpx.Client, campaign: str = "c1", **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", AUTH)
    return client.post(f"/api/v1/campaigns/{campaign}:trigger", **kwargs)


def script(client: httpx.Client, campaign: str, *responses: dict[str, Any]) -> None:
    body = {"campaign_id": campaign, "responses": list(responses)}
    answer = client.post("/_sandbox/script", json=body)
    assert answer.json() == {"queued": len(responses)}


def recorded(client: httpx.Client, **query: str) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = client.get("/_sandbox/requests", params=query).json()[
        "requests"
    ]
    return requests


def test_success_answers_uuid_trigger_id_and_records_request_with_key_masked(
    server: Any, client: httpx.Client
) -> None:
    payload = {
        "audience": {"targets": [{"project_user_id": "u1"}, {"device_id": "d9"}]},
        "properties": {"order_id": "ORD-1", "item_count": 3},
    }
    answer = trigger(client, "019aa002-x", json=payload)

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    trigger_id = answer.json()["trigger_id"]
    assert uuid.UUID(trigger_id).version == 4
    [record] = recorded(client)
    assert record["seq"] == 1
    assert record["method"] == "POST"
    assert record["path"] == "/api/v1/campaigns/019aa002-x:trigger"
    assert record["campaign_id"] == "019aa002-x"
    assert record["body"] == payload
    assert record["raw_body"] is None
    assert record["status"] == 200
    assert record["trigger_id"] == trigger_id
    assert record["headers"]["x-clix-project-id"] == PROJECT
    assert record["headers"]["x-clix-api-key"] == "<valid>"
    assert abs(record["at"] - time.time()) < 60
    assert SECRET not in json.dumps(server.server.records)
    assert SECRET not in client.get("/_sandbox/requests").text


def test_empty_body_and_broadcast_audience_are_accepted(client: httpx.Client) -> None:
    assert trigger(client).status_code == 200
    assert trigger(client, json={"audience": {"broadcast": True}}).status_code == 200
    assert trigger(client, json={"properties": {}}).status_code == 200


def test_percent_encoded_campaign_id_is_decoded_in_records(client: httpx.Client) -> None:
    assert trigger(client, "camp%2Dé").status_code == 200
    assert recorded(client)[0]["campaign_id"] == "camp-é"


@pytest.mark.parametrize(
    ("headers", "masked"),
    [
        ({"X-Clix-Project-ID": PROJECT, "X-Clix-API-Key": "wrong-key-text"}, "<invalid>"),
        ({"X-Clix-Project-ID": "other-project", "X-Clix-API-Key": SECRET}, "<valid>"),
        ({"X-Clix-Project-ID": PROJECT}, None),
    ],
    ids=["wrong-key", "wrong-project", "missing-key"],
)
def test_bad_credentials_are_401_and_the_key_stays_masked(
    client: httpx.Client, headers: dict[str, str], masked: str | None
) -> None:
    answer = trigger(client, headers=headers)

    assert answer.status_code == 401
    assert answer.json() == {"error": "unauthorized"}
    [record] = recorded(client)
    assert record["status"] == 401
    assert record["trigger_id"] is None
    assert record["headers"].get("x-clix-api-key") == masked
    assert SECRET not in json.dumps(record)
    assert "wrong-key-text" not in json.dumps(record)


@pytest.mark.parametrize(
    ("content", "content_type", "fragment"),
    [
        (
            '{"audience": {"targets": [{"project_user_id": "u1", "device_id": "d1"}]}}',
            "application/json",
            "exactly one",
        ),
        ("[1, 2]", "application/json", "JSON object"),
        ('{"audience": {}, "extra": 1}', "application/json", "unknown field"),
        ("{not json", "application/json", "not valid JSON"),
        ('{"properties": NaN}', "application/json", "not valid JSON"),
        ('{"audience": {"broadcast": "yes"}}', "application/json", "broadcast"),
        ('{"audience": {"targets": [{"device_id": 7}]}}', "application/json", "targets[0]"),
        ('{"properties": [1]}', "application/json", "properties"),
        ("{}", "text/plain", "Content-Type"),
    ],
    ids=[
        "target-with-both-ids",
        "non-object-body",
        "unknown-top-level-key",
        "non-json",
        "nan-is-not-json",
        "broadcast-not-bool",
        "target-id-not-string",
        "properties-not-object",
        "wrong-content-type",
    ],
)
def test_invalid_bodies_are_400_with_a_message(
    client: httpx.Client, content: str, content_type: str, fragment: str
) -> None:
    answer = trigger(client, content=content, headers={**AUTH, "Content-Type": content_type})

    assert answer.status_code == 400
    assert fragment in answer.json()["error"]
    [record] = recorded(client)
    assert record["status"] == 400


def test_non_json_body_is_recorded_raw(client: httpx.Client) -> None:
    trigger(client, content=b"{oops \xff", headers={**AUTH, "Content-Type": "application/json"})

    [record] = recorded(client)
    assert record["body"] is None
    assert record["raw_body"] == "{oops \ufffd"


@pytest.mark.parametrize("campaign", ["%2Fx", "a%20b", "a%3Fb", "a%23b", "a%0Ab", ""])
def test_unsafe_or_empty_campaign_id_is_400(client: httpx.Client, campaign: str) -> None:
    answer = trigger(client, campaign)

    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid campaign id"}


def test_unknown_path_is_404_and_other_methods_on_the_route_are_405(client: httpx.Client) -> None:
    assert client.post("/api/v1/campaigns/c1", headers=AUTH).status_code == 404
    assert client.post("/api/v1/campaigns/a/b:trigger", headers=AUTH).json() == {
        "error": "not found"
    }
    wrong_method = client.get("/api/v1/campaigns/c1:trigger", headers=AUTH)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    statuses = [r["status"] for r in recorded(client)]
    assert statuses == [404, 404, 405]
    assert recorded(client)[0]["campaign_id"] is None


def test_oversized_body_is_413(client: httpx.Client) -> None:
    answer = trigger(
        client,
        content=b" " * (sandbox.MAX_BODY_BYTES + 1),
        headers={**AUTH, "Content-Type": "application/json"},
    )

    assert answer.status_code == 413
    assert trigger(client).status_code == 200  # the connection is still usable


def test_scripts_are_consumed_fifo_per_campaign_then_answers_are_normal(
    client: httpx.Client,
) -> None:
    script(
        client,
        "c1",
        {"status": 503},
        {"status": 400, "body": {"error": "campaign is not API-triggered"}},
        {"status": 200},
    )
    script(client, "c2", {"status": 500})

    assert trigger(client, "c2").status_code == 500
    first = trigger(client, "c1")
    assert (first.status_code, first.json()) == (503, {"error": "service unavailable"})
    second = trigger(client, "c1")
    assert (second.status_code, second.json()) == (400, {"error": "campaign is not API-triggered"})
    third = trigger(client, "c1")
    assert third.status_code == 200
    assert uuid.UUID(third.json()["trigger_id"])
    assert [trigger(client, c).status_code for c in ("c1", "c2")] == [200, 200]
    assert [r["status"] for r in recorded(client, campaign_id="c1")] == [503, 400, 200, 200]


def test_scripted_answer_takes_precedence_over_auth(client: httpx.Client) -> None:
    script(client, "c1", {"status": 200})

    assert trigger(client, headers={}).status_code == 200
    assert trigger(client, headers={}).status_code == 401


def test_scripted_drop_closes_connection_without_answer(client: httpx.Client) -> None:
    script(client, "c1", {"action": "drop"})

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        trigger(client)
    assert trigger(client).status_code == 200
    [dropped, ok] = recorded(client)
    assert dropped["status"] is None
    assert ok["status"] == 200
    stats = client.get("/_sandbox/stats").json()
    assert stats == {"total": 2, "by_status": {"200": 1}, "dropped": 1}


def test_scripted_429_carries_retry_after(client: httpx.Client) -> None:
    script(client, "c1", {"status": 429, "headers": {"Retry-After": "7"}}, {"status": 429})

    explicit, default = trigger(client), trigger(client)

    assert (explicit.status_code, explicit.headers["retry-after"]) == (429, "7")
    assert (default.status_code, default.headers["retry-after"]) == (429, "1")


def test_scripted_delay_holds_the_answer(client: httpx.Client) -> None:
    script(client, "c1", {"status": 200, "delay_ms": 300})

    started = time.monotonic()
    answer = trigger(client)

    assert answer.status_code == 200
    assert time.monotonic() - started >= 0.25  # a lower bound only: never a strict wall time


def test_in_flight_lists_a_held_request_until_it_is_answered(
    server: Any, client: httpx.Client
) -> None:
    script(client, "held", {"status": 200, "delay_ms": 4000})
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=10.0) as other:
        sender = threading.Thread(
            target=lambda: answers.append(trigger(other, "held", json={"properties": {"n": 1}}))
        )
        sender.start()
        deadline = time.monotonic() + 3.5  # the answer is held 4 s: time to look
        held: list[dict[str, Any]] = []
        while not held and time.monotonic() < deadline:
            held = client.get("/_sandbox/in_flight", params={"campaign_id": "held"}).json()[
                "in_flight"
            ]
            time.sleep(0.02)
        sender.join(10)

    assert [(r["campaign_id"], r["body"], r["status"]) for r in held] == [
        ("held", {"properties": {"n": 1}}, None)
    ]
    assert held[0]["headers"]["x-clix-api-key"] == "<valid>"
    assert [a.status_code for a in answers] == [200]
    assert client.get("/_sandbox/in_flight").json() == {"in_flight": []}
    assert recorded(client, campaign_id="held")[0]["status"] == 200


def test_invalid_script_is_refused(client: httpx.Client) -> None:
    bad_entries: list[Any] = [
        {"status": 42},
        {"action": "explode"},
        {"status": 200, "headers": {"X-Evil": "a\r\nSet-Cookie: x"}},
        {"delay_ms": -1},
        "drop",
    ]
    for entry in bad_entries:
        body = {"campaign_id": "c1", "responses": [entry]}
        assert client.post("/_sandbox/script", json=body).status_code == 400
    assert trigger(client).status_code == 200  # nothing was queued


def test_rate_limit_answers_429_with_ratelimit_headers_and_bounds_successes() -> None:
    config = sandbox.SandboxConfig(project_id=PROJECT, api_key=SECRET, rate_limit_per_s=20)
    with sandbox.run_in_thread(config) as srv, httpx.Client(base_url=srv.url) as client:
        started = time.monotonic()
        answers = [trigger(client) for _ in range(60)]
        elapsed = time.monotonic() - started

    ok = [a for a in answers if a.status_code == 200]
    limited = [a for a in answers if a.status_code == 429]
    assert len(ok) + len(limited) == 60
    assert limited, "60 quick requests at 20/s must hit the limit"
    # Burst of 20 plus what refilled while the loop ran (generous: timing is not asserted).
    assert len(ok) <= 20 + 20 * elapsed + 2
    for answer in limited:
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.headers["x-ratelimit-limit"] == "20"
        assert answer.headers["x-ratelimit-remaining"] == "0"
        assert int(answer.headers["x-ratelimit-reset"]) >= int(time.time()) - 5
    assert ok[0].headers["x-ratelimit-limit"] == "20"
    assert int(ok[0].headers["x-ratelimit-remaining"]) == 19


def test_random_faults_follow_the_live_config(client: httpx.Client) -> None:
    storm = client.post("/_sandbox/config", json={"fail_rate": 1.0})
    assert storm.status_code == 200
    assert storm.json()["fail_rate"] == 1.0
    assert "api_key" not in storm.json()
    assert [trigger(client).status_code for _ in range(5)] == [503] * 5

    client.post("/_sandbox/config", json={"fail_rate": 0.0, "rate_429": 1.0, "retry_after_s": 3})
    limited = trigger(client)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")

    client.post("/_sandbox/config", json={"rate_429": 0.0, "drop_rate": 1.0})
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        trigger(client)

    client.post("/_sandbox/config", json={"drop_rate": 0.0})
    assert trigger(client).status_code == 200
    stats = client.get("/_sandbox/stats").json()
    assert stats == {"total": 8, "by_status": {"503": 5, "429": 1, "200": 1}, "dropped": 1}


def test_seeded_fault_rates_are_reproducible_shares() -> None:
    def statuses() -> list[int]:
        config = sandbox.SandboxConfig(project_id=PROJECT, api_key=SECRET, fail_rate=0.3, seed=7)
        with sandbox.run_in_thread(config) as srv, httpx.Client(base_url=srv.url) as client:
            return [trigger(client).status_code for _ in range(200)]

    first, second = statuses(), statuses()
    assert first == second
    assert 30 <= first.count(503) <= 90
    assert set(first) == {200, 503}


def test_config_update_refuses_credentials_and_bad_values(client: httpx.Client) -> None:
    for body in ({"api_key": "x"}, {"project_id": "x"}, {"fail_rate": 2}, {"latency_ms": "1"}):
        answer = client.post("/_sandbox/config", json=body)
        assert answer.status_code == 400, body
    assert trigger(client).status_code == 200


def test_reset_clears_records_scripts_and_restores_startup_faults(client: httpx.Client) -> None:
    script(client, "c1", {"status": 503})
    client.post("/_sandbox/config", json={"fail_rate": 1.0})
    trigger(client, "c2")

    reset = client.post("/_sandbox/reset")

    assert reset.status_code == 200
    assert recorded(client) == []
    assert client.get("/_sandbox/stats").json() == {"total": 0, "by_status": {}, "dropped": 0}
    assert trigger(client, "c1").status_code == 200  # script gone, storm over
    assert [r["seq"] for r in recorded(client)] == [2]  # seq keeps counting for `since`


def test_requests_can_be_filtered_by_campaign_and_since(client: httpx.Client) -> None:
    for campaign in ("a", "b", "a", "b"):
        trigger(client, campaign)

    assert [r["seq"] for r in recorded(client, campaign_id="a")] == [1, 3]
    assert [r["seq"] for r in recorded(client, since="2")] == [3, 4]
    assert [r["seq"] for r in recorded(client, campaign_id="b", since="2")] == [4]
    assert client.get("/_sandbox/stats", params={"campaign_id": "b"}).json()["total"] == 2
    assert client.get("/_sandbox/requests", params={"since": "x"}).status_code == 400


def test_records_are_capped_dropping_the_oldest(server: Any, client: httpx.Client) -> None:
    server.server.max_records = 50

    for _ in range(120):
        trigger(client)

    seqs = [r["seq"] for r in recorded(client)]
    assert len(seqs) <= 50
    assert seqs[-1] == 120
    assert seqs == list(range(seqs[0], 121))


def test_control_api_health_and_unknown_control_paths(client: httpx.Client) -> None:
    assert client.get("/_sandbox/health").json() == {"ok": True}
    assert client.get("/_sandbox/nope").status_code == 404
    assert client.get("/_sandbox/reset").status_code == 405
    assert recorded(client) == []  # the control API is not recorded


def test_keep_alive_serves_many_requests_over_one_connection(
    server: Any, client: httpx.Client
) -> None:
    answers = [trigger(client, f"c{i % 5}") for i in range(300)]

    assert all(a.status_code == 200 for a in answers)
    assert len({a.json()["trigger_id"] for a in answers}) == 300
    assert server.server.connections_total == 1


def test_connection_close_is_honoured(server: Any, client: httpx.Client) -> None:
    answer = trigger(client, headers={**AUTH, "Connection": "close"})
    assert answer.status_code == 200
    assert answer.headers["connection"] == "close"
    again = trigger(client)
    assert again.status_code == 200
    assert again.headers["connection"] == "keep-alive"
    assert server.server.connections_total == 2


def _raw_exchange(server: Any, data: bytes, until: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while until not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_expect_100_continue_is_answered_before_the_body(server: Any) -> None:
    head = (
        "POST /api/v1/campaigns/c1:trigger HTTP/1.1\r\nHost: x\r\n"
        f"X-Clix-Project-ID: {PROJECT}\r\nX-Clix-API-Key: {SECRET}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"{}")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")


def test_http10_keep_alive_gets_an_explicit_keep_alive_header(server: Any) -> None:
    request = (
        "POST /api/v1/campaigns/c1:trigger HTTP/1.0\r\nConnection: keep-alive\r\n"
        f"X-Clix-Project-ID: {PROJECT}\r\nX-Clix-API-Key: {SECRET}\r\n\r\n"
    ).encode()

    answer = _raw_exchange(server, request * 2, b"}HTTP/1.1 200 OK")

    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2  # pipelined on one connection
    assert b"Connection: keep-alive\r\n" in answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"POST /x HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    ],
    ids=["bad-request-line", "bad-header", "bad-length", "chunked", "huge-headers"],
)
def test_broken_framing_is_answered_and_the_connection_closed(
    server: Any, request_bytes: bytes, status: bytes
) -> None:
    answer = _raw_exchange(server, request_bytes, b"\x00never")

    assert answer.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close\r\n" in answer


def test_latency_is_added_to_every_trigger_request() -> None:
    config = sandbox.SandboxConfig(project_id=PROJECT, api_key=SECRET, latency_ms=200)
    with sandbox.run_in_thread(config) as srv, httpx.Client(base_url=srv.url) as client:
        started = time.monotonic()
        assert trigger(client).status_code == 200
        assert time.monotonic() - started >= 0.15
        assert client.get("/_sandbox/health").status_code == 200


def test_config_repr_never_shows_the_key() -> None:
    config = sandbox.SandboxConfig(api_key=SECRET)

    assert SECRET not in repr(config)
    assert "api_key" not in config.public()


def test_stop_closes_the_listener_and_is_idempotent() -> None:
    srv = sandbox.run_in_thread(sandbox.SandboxConfig())
    url = srv.url
    assert httpx.get(f"{url}/_sandbox/health").status_code == 200

    srv.stop()
    srv.stop()

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_sandbox/health")


@pytest.fixture
def cli_process() -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "CLIX_SANDBOX_API_KEY": SECRET}
    args = [sys.executable, "-m", "worker.sandbox", "--port", "0", "--project-id", PROJECT]
    proc = subprocess.Popen(
        [*args, "--fail-rate", "0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(15, proc.kill)  # a hung child must not hang the suite
    watchdog.start()
    try:
        yield proc
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


def test_cli_prints_listening_line_serves_and_exits_zero_on_sigterm(
    cli_process: subprocess.Popen[str],
) -> None:
    assert cli_process.stdout is not None
    line = cli_process.stdout.readline()
    assert line.startswith("clix sandbox listening on http://127.0.0.1:")
    assert f"project {PROJECT}" in line
    url = line.split()[4]

    with httpx.Client(base_url=url, timeout=5.0) as client:
        assert trigger(client).status_code == 200

    cli_process.send_signal(signal.SIGTERM)
    out, err = cli_process.communicate(timeout=10)
    assert cli_process.returncode == 0
    assert SECRET not in line + out + err


def test_cli_rejects_bad_usage_with_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        sandbox.main(["--fail-rate", "3"])
    assert exc.value.code == 2
