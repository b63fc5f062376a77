"""A trigger goes from the producer through a real worker to the sandbox, once."""

from __future__ import annotations

import json
import threading

import pytest

from tasks import enqueue_trigger
from tests.integration.conftest import PROJECT_ID, Fleet
from tests.integration.processes import SandboxProcess, cli, cli_json, wait_until

pytestmark = pytest.mark.integration


def _done(fleet: Fleet, campaign: str, key: str) -> str | None:
    status = fleet.store.status(fleet.scope(campaign, key))
    return status.trigger_id if status.state == "done" else None


def test_trigger_reaches_clix_with_headers_and_exact_body(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    result = enqueue_trigger(
        campaign,
        "order-1",
        audience={"targets": [{"project_user_id": "u1"}, {"device_id": "d9"}]},
        properties={"order_id": "ORD-1", "item_count": 3, "express": False},
    )
    assert result.get(timeout=30) == {
        "trigger_id": wait_until(lambda: _done(fleet, campaign, "order-1"), 30, "done"),
        "deduplicated": False,
    }
    [request] = sandbox.requests(campaign)
    assert request["method"] == "POST"
    assert request["path"] == f"/api/v1/campaigns/{campaign}:trigger"
    assert request["headers"]["x-clix-project-id"] == PROJECT_ID
    assert request["headers"]["x-clix-api-key"] == "<valid>"
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == {
        "audience": {"targets": [{"project_user_id": "u1"}, {"device_id": "d9"}]},
        "properties": {"order_id": "ORD-1", "item_count": 3, "express": False},
    }
    status = cli_json(fleet.env, "status", campaign, "order-1")
    assert status == {
        "campaign_id": campaign,
        "idempotency_key": "order-1",
        "state": "done",
        "trigger_id": request["trigger_id"],
    }


def test_body_carries_only_what_the_producer_gave(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    enqueue_trigger(campaign, "only-props", properties={"n": 1}).get(timeout=30)
    enqueue_trigger(campaign, "nothing").get(timeout=30)
    bodies = {
        r["body"].get("properties", {}).get("n"): r["body"] for r in sandbox.requests(campaign)
    }
    assert bodies == {1: {"properties": {"n": 1}}, None: {}}


def test_same_key_enqueued_many_times_reaches_clix_once(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    first = enqueue_trigger(campaign, "dup").get(timeout=30)
    again = enqueue_trigger(campaign, "dup").get(timeout=30)
    assert again == {"trigger_id": first["trigger_id"], "deduplicated": True}

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(enqueue_trigger(campaign, "burst")))
        for _ in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = [r.get(timeout=60) for r in results]
    assert sum(not o["deduplicated"] for o in outcomes) == 1
    keys = [r["body"] for r in sandbox.requests(campaign)]
    assert len(keys) == 2  # one for "dup", one for "burst"

    other = f"{campaign}-other"
    enqueue_trigger(other, "dup").get(timeout=30)
    assert len(sandbox.requests(other)) == 1


def test_server_errors_are_retried_until_clix_accepts(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    sandbox.script(campaign, {"status": 503}, {"status": 502})
    outcome = enqueue_trigger(campaign, "flaky").get(timeout=30)
    requests = sandbox.requests(campaign)
    assert [r["status"] for r in requests] == [503, 502, 200]
    assert outcome == {"trigger_id": requests[-1]["trigger_id"], "deduplicated": False}
    assert fleet.dlq.entries() == [] or all(
        e["campaign_id"] != campaign for e in fleet.dlq.entries()
    )


def test_dropped_connection_is_retried(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    sandbox.script(campaign, {"action": "drop"})
    outcome = enqueue_trigger(campaign, "dropped").get(timeout=30)
    requests = sandbox.requests(campaign)
    assert [r["status"] for r in requests] == [None, 200]
    assert outcome["trigger_id"] == requests[-1]["trigger_id"]


@pytest.mark.parametrize("status", [400, 404, 422])
def test_final_client_errors_are_sent_once_and_dead_lettered(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str, status: int
) -> None:
    sandbox.script(campaign, {"status": status, "body": {"error": f"scripted {status}"}})
    result = enqueue_trigger(campaign, "bad")
    with pytest.raises(Exception, match="dead-lettered"):
        result.get(timeout=30)
    assert [r["status"] for r in sandbox.requests(campaign)] == [status]
    [entry] = [e for e in fleet.dlq.entries() if e["campaign_id"] == campaign]
    assert entry["reason"] == "rejected"
    assert entry["status_code"] == status
    assert entry["attempts"] == 1
    assert f"scripted {status}" in entry["error"]
    assert entry["trigger"] == {"campaign_id": campaign, "idempotency_key": "bad"}


def test_exhausted_retries_dead_letter_and_release_the_key_for_replay(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    sandbox.script(campaign, *[{"status": 503}] * 3)
    with pytest.raises(Exception, match="dead-lettered"):
        enqueue_trigger(campaign, "down", properties={"x": 1}).get(timeout=30)
    [entry] = [e for e in fleet.dlq.entries() if e["campaign_id"] == campaign]
    assert entry["reason"] == "retries_exhausted"
    assert entry["status_code"] == 503
    assert entry["attempts"] == 3
    assert entry["trigger"] == {
        "campaign_id": campaign,
        "idempotency_key": "down",
        "properties": {"x": 1},
    }
    scope = fleet.scope(campaign, "down")
    assert not fleet.redis().exists(fleet.keys.lease(scope))

    status = cli(fleet.env, "status", campaign, "down", "--json")
    assert status.returncode == 0  # known: DESIGN.md section 4 names the state
    assert json.loads(status.stdout)["state"] == "dead_lettered"
    assert json.loads(status.stdout)["dead_letter_id"] == entry["id"]
    assert [a["status"] for a in entry["history"]] == [503, 503, 503]

    replay = cli(fleet.env, "dlq", "replay", entry["id"])
    assert replay.returncode == 0, replay.stderr
    trigger_id = wait_until(lambda: _done(fleet, campaign, "down"), 30, "the replay to deliver")
    assert [r["status"] for r in sandbox.requests(campaign)] == [503, 503, 503, 200]
    assert sandbox.requests(campaign)[-1]["trigger_id"] == trigger_id
    assert fleet.dlq.get(entry["id"]) is None
