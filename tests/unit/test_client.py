"""The Clix client against httpx.MockTransport: headers, body, URL, retries, secrets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from config.settings import Settings
from tasks.client import ClixClient, is_ambiguous
from tasks.errors import (
    AuthenticationFailed,
    ClixError,
    NetworkError,
    OutOfTime,
    RateLimited,
    Rejected,
    ServerError,
)
from tasks.models import TriggerRequest
from tasks.quota import Quota
from tasks.retries import RetryPolicy

#: the ``mock_clix`` fixture: ``mock_clix(*steps, then=, policy=)`` -> a ClixHarness
Harness = Callable[..., Any]


def request_for(campaign_id: str = "camp-1", **fields: object) -> TriggerRequest:
    return TriggerRequest.parse({"campaign_id": campaign_id, "idempotency_key": "k-1", **fields})


def policy(**overrides: float) -> RetryPolicy:
    values: dict[str, float] = {
        "max_attempts": 5,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 8.0,
        "deadline_s": 30.0,
        "retry_after_max_s": 20.0,
    }
    values.update(overrides)
    return RetryPolicy(**values)  # type: ignore[arg-type]


def assert_equal_jitter(sleeps: list[float], p: RetryPolicy) -> None:
    for n, wait in enumerate(sleeps, start=1):
        step = min(p.backoff_max_s, p.backoff_initial_s * 2 ** (n - 1))
        assert step / 2 <= wait <= step, (n, wait, step)


# --- the request ----------------------------------------------------------------------


def test_request_carries_auth_headers_content_type_and_exact_body(
    mock_clix: Harness, settings: Settings, api_key: str
) -> None:
    clix = mock_clix(200)
    trigger = request_for(
        audience={"targets": [{"project_user_id": "u1"}, {"device_id": "d9"}]},
        properties={"order_id": "ORD-1", "item_count": 3},
    )
    sent = clix.client.trigger(trigger)
    assert sent.trigger_id == "trg-1"
    (request,) = clix.requests
    assert request.method == "POST"
    assert str(request.url) == f"{settings.clix_base_url}/api/v1/campaigns/camp-1:trigger"
    assert request.headers["X-Clix-Project-ID"] == settings.clix_project_id
    assert request.headers["X-Clix-API-Key"] == api_key
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == trigger.body_bytes()
    assert json.loads(request.content) == {
        "audience": {"targets": [{"project_user_id": "u1"}, {"device_id": "d9"}]},
        "properties": {"order_id": "ORD-1", "item_count": 3},
    }


def test_request_without_audience_or_properties_sends_an_empty_object(
    mock_clix: Harness,
) -> None:
    clix = mock_clix(200)
    clix.client.trigger(request_for())
    assert clix.requests[0].content == b"{}"


@pytest.mark.parametrize(
    ("campaign_id", "path"),
    [
        ("50%off", "/api/v1/campaigns/50%25off:trigger"),
        ("a%2Fb", "/api/v1/campaigns/a%252Fb:trigger"),
        ("ns:camp", "/api/v1/campaigns/ns:camp:trigger"),
        ("caf\u00e9", "/api/v1/campaigns/caf%C3%A9:trigger"),
        ("a[1]", "/api/v1/campaigns/a%5B1%5D:trigger"),
    ],
)
def test_campaign_id_is_quoted_as_one_path_segment(
    mock_clix: Harness, campaign_id: str, path: str
) -> None:
    clix = mock_clix(200)
    clix.client.trigger(request_for(campaign_id))
    assert clix.requests[0].url.raw_path.decode() == path
    assert ClixClient.path_for(campaign_id) == path


def test_trailing_slash_of_base_url_is_dropped() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"trigger_id": "t"})

    client = ClixClient(
        base_url="https://clix.test/",
        project_id="p",
        api_key=SecretStr("k"),
        policy=policy(),
        transport=httpx.MockTransport(handler),
    )
    client.trigger(request_for())
    client.close()
    assert client.base_url == "https://clix.test"
    assert seen == ["https://clix.test/api/v1/campaigns/camp-1:trigger"]


def test_a_cookie_set_by_an_answer_is_never_sent_back(mock_clix: Harness) -> None:
    answer = httpx.Response(
        200, json={"trigger_id": "t"}, headers={"set-cookie": "lb=node-3; Path=/"}
    )
    # sequential requests: the same pooled httpx client answers both
    clix = mock_clix(then=answer, policy=policy())
    assert clix.client.trigger(request_for()).trigger_id == "t"
    assert clix.client.trigger(request_for(idempotency_key="k-2")).trigger_id == "t"
    assert clix.client.created == 1
    assert [r.headers.get("cookie") for r in clix.requests] == [None, None]


@pytest.mark.parametrize(
    "base_url", ["https://clix.test", "https://proxy.test/clix/", "http://h:8080"]
)
def test_parsed_trigger_url_is_what_httpx_joins_from_base_url_and_path(base_url: str) -> None:
    client = ClixClient(base_url=base_url, project_id="p", api_key=SecretStr("k"), policy=policy())
    joined = httpx.Client(base_url=base_url)
    for campaign_id in ("camp-1", "50%off", "ns:camp", "caf\u00e9", "camp-1"):
        expected = joined.build_request("POST", ClixClient.path_for(campaign_id)).url
        assert client.url_for(campaign_id) == expected
        assert client.url_for(campaign_id).raw_path == expected.raw_path
    joined.close()
    client.close()


def test_parsed_trigger_urls_are_kept_for_the_most_recent_campaigns_only() -> None:
    client = ClixClient(
        urls_cached=3,
        base_url="https://clix.test",
        project_id="p",
        api_key=SecretStr("k"),
        policy=policy(),
    )
    first = client.url_for("c0")
    for n in range(1, 4):
        client.url_for(f"c{n}")
    assert list(client._urls) == ["c1", "c2", "c3"]  # c0, least recently used, was dropped
    client.url_for("c1")  # a hit makes it the most recent
    client.url_for("c4")
    assert list(client._urls) == ["c3", "c1", "c4"]
    assert client.url_for("c0") == first  # rebuilt the same
    client.close()


def test_2xx_without_a_trigger_id_is_recorded_as_unknown_not_resent(mock_clix: Harness) -> None:
    clix = mock_clix(httpx.Response(200, text="ok"))
    assert clix.client.trigger(request_for()).trigger_id == "unknown"
    assert len(clix.requests) == 1


# --- retries --------------------------------------------------------------------------


def test_503_503_200_sends_three_times_and_returns_the_trigger_id(mock_clix: Harness) -> None:
    p = policy()
    clix = mock_clix(503, 503, 200, policy=p)
    sent = clix.client.trigger(request_for())
    assert sent.trigger_id == "trg-3"
    assert sent.attempts == 3
    assert len(clix.requests) == 3
    assert len(clix.sleeps.calls) == 2
    assert_equal_jitter(clix.sleeps.calls, p)


def test_backoff_doubles_and_is_capped_with_equal_jitter(mock_clix: Harness) -> None:
    p = policy(max_attempts=8, backoff_initial_s=1.0, backoff_max_s=4.0)
    clix = mock_clix(then=500, policy=p)
    with pytest.raises(ServerError):
        clix.client.trigger(request_for())
    assert len(clix.requests) == 8
    assert len(clix.sleeps.calls) == 7
    assert_equal_jitter(clix.sleeps.calls, p)
    # steps 1, 2, 4, 4, 4...: from the third wait on, none exceeds the cap
    assert max(clix.sleeps.calls) <= 4.0
    assert all(w >= 2.0 for w in clix.sleeps.calls[2:])


def test_400_is_sent_once_and_raises_rejected_with_status(mock_clix: Harness) -> None:
    clix = mock_clix(400, then=200)
    with pytest.raises(Rejected) as caught:
        clix.client.trigger(request_for())
    assert caught.value.status_code == 400
    assert len(clix.requests) == 1
    assert clix.sleeps.calls == []


def test_401_is_sent_once_and_raises_authentication_failed(mock_clix: Harness) -> None:
    clix = mock_clix(401, then=200)
    with pytest.raises(AuthenticationFailed):
        clix.client.trigger(request_for())
    assert len(clix.requests) == 1


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_network_errors_are_retried(mock_clix: Harness, exc: Exception) -> None:
    clix = mock_clix(exc, 200, policy=policy())
    assert clix.client.trigger(request_for()).trigger_id == "trg-2"
    assert len(clix.requests) == 2


def test_attempts_are_bounded_by_max_attempts_and_the_last_error_is_raised(
    mock_clix: Harness,
) -> None:
    clix = mock_clix(503, 502, 500, then=200, policy=policy(max_attempts=3))
    with pytest.raises(ServerError) as caught:
        clix.client.trigger(request_for())
    # the real last error, not tenacity.RetryError
    assert type(caught.value) is ServerError
    assert caught.value.status_code == 500
    assert len(clix.requests) == 3


def test_last_network_error_is_reraised_as_network_error(mock_clix: Harness) -> None:
    clix = mock_clix(then=httpx.ReadTimeout("timed out"), policy=policy(max_attempts=2))
    with pytest.raises(NetworkError) as caught:
        clix.client.trigger(request_for())
    assert caught.value.ambiguous is True
    assert is_ambiguous(caught.value)
    assert len(clix.requests) == 2


def test_no_attempt_is_made_when_its_wait_would_cross_the_deadline(mock_clix: Harness) -> None:
    # every wait is at least 0.5 s, the deadline is 0.3 s: stop after the first failure
    p = policy(max_attempts=10, backoff_initial_s=1.0, backoff_max_s=1.0, deadline_s=0.3)
    clix = mock_clix(then=503, policy=p)
    with pytest.raises(ServerError):
        clix.client.trigger(request_for())
    assert len(clix.requests) == 1
    assert clix.sleeps.calls == []


def test_a_retry_the_delivery_has_no_time_for_raises_out_of_time(mock_clix: Harness) -> None:
    # budget left (10 attempts, 30 s) but 2 s left in the delivery, less than a request
    clix = mock_clix(then=503, policy=policy(max_attempts=10, request_timeout_s=5.0))
    with pytest.raises(OutOfTime) as caught:
        clix.client.trigger(request_for(), remaining_s=lambda: 2.0)
    assert isinstance(caught.value.last, ServerError)
    assert caught.value.__cause__ is caught.value.last
    assert len(clix.requests) == 1


def test_a_429_the_delivery_has_no_time_to_wait_out_stays_a_429(mock_clix: Harness) -> None:
    # a 429 goes back to the queue uncounted (the fleet's pace); OutOfTime would count it
    clix = mock_clix(429, then=200, policy=policy(max_attempts=10, request_timeout_s=5.0))
    with pytest.raises(RateLimited):
        clix.client.trigger(request_for(), remaining_s=lambda: 2.0)
    assert len(clix.requests) == 1


def test_a_spent_budget_is_the_last_error_even_with_no_time_left(mock_clix: Harness) -> None:
    # the attempts are spent too: that is what stopped it, not the deadline
    clix = mock_clix(then=503, policy=policy(max_attempts=1, request_timeout_s=5.0))
    with pytest.raises(ServerError):
        clix.client.trigger(request_for(), remaining_s=lambda: 2.0)
    assert len(clix.requests) == 1


def test_waiting_for_a_rate_limit_slot_is_not_charged_to_the_retry_deadline(
    mock_clix: Harness,
) -> None:
    # the first attempt waits 0.3 s (real time) for its slot; the retry deadline
    # is 0.2 s: charged with that wait, the 503 would end the retries at once
    waited = {"s": 0.0}

    def slow_slot(number: int) -> None:
        if number == 1:
            time.sleep(0.3)
            waited["s"] += 0.3

    p = policy(max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.01, deadline_s=0.2)
    clix = mock_clix(503, 200, policy=p)
    sent = clix.client.trigger(
        request_for(), before_attempt=slow_slot, slot_wait_s=lambda: waited["s"]
    )
    assert sent.attempts == 2
    # without telling the client the wait, the same run stops after the 503
    clix = mock_clix(503, 200, policy=p)
    with pytest.raises(ServerError):
        clix.client.trigger(request_for(), before_attempt=slow_slot)


def test_attempts_are_bounded_by_the_deadline_in_real_time(settings: Settings) -> None:
    requests: list[httpx.Request] = []

    def slow_503(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(503)

    slept: list[float] = []

    def real_sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    p = policy(max_attempts=100, backoff_initial_s=0.1, backoff_max_s=0.1, deadline_s=0.3)
    client = ClixClient(
        base_url=settings.clix_base_url,
        project_id="p",
        api_key=SecretStr("k"),
        policy=p,
        transport=httpx.MockTransport(slow_503),
        sleep=real_sleep,
    )
    started = time.monotonic()
    with pytest.raises(ServerError):
        client.trigger(request_for())
    elapsed = time.monotonic() - started
    client.close()
    # waits of 0.05-0.1 s: at most 7 attempts fit in 0.3 s (more than one always does)
    assert 2 <= len(requests) <= 7
    assert elapsed < 0.3 + 0.5
    # no wait was started that would end after the deadline
    assert sum(slept) < 0.3


def test_429_waits_retry_after(mock_clix: Harness) -> None:
    clix = mock_clix(httpx.Response(429, headers={"Retry-After": "2"}), 200, policy=policy())
    assert clix.client.trigger(request_for()).trigger_id == "trg-2"
    assert clix.sleeps.calls == [2.0]


def test_429_wait_is_capped_by_retry_after_max(mock_clix: Harness) -> None:
    clix = mock_clix(
        httpx.Response(429, headers={"Retry-After": "120"}), 200, policy=policy(retry_after_max_s=3)
    )
    clix.client.trigger(request_for())
    assert clix.sleeps.calls == [3.0]


def test_429_without_retry_after_backs_off(mock_clix: Harness) -> None:
    p = policy()
    clix = mock_clix(429, 200, policy=p)
    clix.client.trigger(request_for())
    assert len(clix.sleeps.calls) == 1
    assert_equal_jitter(clix.sleeps.calls, p)


def test_429s_give_up_once_their_own_wait_budget_is_spent(mock_clix: Harness) -> None:
    clix = mock_clix(
        then=httpx.Response(429, headers={"Retry-After": "1"}),
        policy=policy(max_attempts=2, rate_limited_max_wait_s=3.5),
    )
    with pytest.raises(RateLimited) as caught:
        clix.client.trigger(request_for())
    assert caught.value.status_code == 429
    assert clix.sleeps.calls == [1.0, 1.0, 1.0]  # a fourth wait would overspend 3.5 s


def test_retry_after_zero_still_waits_the_backoff_floor(mock_clix: Harness) -> None:
    limited = httpx.Response(429, headers={"Retry-After": "0"})
    clix = mock_clix(limited, 200, policy=policy(backoff_initial_s=0.25))
    clix.client.trigger(request_for())
    assert clix.sleeps.calls == [0.25]


def test_waiting_out_429s_does_not_use_up_max_attempts(mock_clix: Harness) -> None:
    limited = httpx.Response(429, headers={"Retry-After": "0"})
    clix = mock_clix(limited, limited, limited, 200, policy=policy(max_attempts=2))
    assert clix.client.trigger(request_for()).trigger_id == "trg-4"


def test_429s_between_server_errors_do_not_count_as_attempts(mock_clix: Harness) -> None:
    limited = httpx.Response(429, headers={"Retry-After": "1"})
    clix = mock_clix(503, limited, limited, 503, then=200, policy=policy(max_attempts=2))
    with pytest.raises(ServerError):
        clix.client.trigger(request_for())
    assert len(clix.requests) == 4


# --- hooks ----------------------------------------------------------------------------


def test_hooks_are_called_with_attempt_numbers_errors_latency_and_quota(
    mock_clix: Harness,
) -> None:
    clix = mock_clix(503, httpx.ConnectError("refused"), 200, policy=policy())
    before: list[int] = []
    after: list[tuple[int, ClixError | None, float, Quota | None]] = []
    clix.client.trigger(
        request_for(),
        before_attempt=before.append,
        after_attempt=lambda n, err, ms, quota: after.append((n, err, ms, quota)),
    )
    assert before == [1, 2, 3]
    assert [n for n, _, _, _ in after] == [1, 2, 3]
    assert isinstance(after[0][1], ServerError)
    assert isinstance(after[1][1], NetworkError)
    assert after[2][1] is None
    assert all(ms >= 0 for _, _, ms, _ in after)
    # no X-RateLimit-* headers in these answers: no quota
    assert [quota for _, _, _, quota in after] == [None, None, None]


def test_after_attempt_gets_the_quota_of_a_success_answer(mock_clix: Harness) -> None:
    accepted = httpx.Response(
        200,
        json={"trigger_id": "trg-q"},
        headers={
            "X-RateLimit-Limit": "1000",
            "X-RateLimit-Remaining": "17",
            "X-RateLimit-Reset": "1700000000.5",
        },
    )
    clix = mock_clix(accepted, policy=policy())
    seen: list[Quota | None] = []
    sent = clix.client.trigger(request_for(), after_attempt=lambda n, e, ms, q: seen.append(q))
    assert sent.trigger_id == "trg-q"
    assert seen == [Quota(limit=1000, remaining=17, reset_at_s=1_700_000_000.5)]


def test_after_attempt_gets_no_quota_for_an_error_answer(mock_clix: Harness) -> None:
    limited = httpx.Response(
        429,
        headers={"Retry-After": "1", "X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0"},
    )
    clix = mock_clix(limited, 200, policy=policy())
    seen: list[tuple[ClixError | None, Quota | None]] = []
    clix.client.trigger(request_for(), after_attempt=lambda n, e, ms, q: seen.append((e, q)))
    assert isinstance(seen[0][0], RateLimited)
    assert seen[0][1] is None
    assert seen[1] == (None, None)


def test_partial_or_malformed_quota_headers_keep_what_parses(mock_clix: Harness) -> None:
    answer = httpx.Response(
        200,
        json={"trigger_id": "trg-1"},
        headers={"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "soon"},
    )
    clix = mock_clix(answer, policy=policy())
    seen: list[Quota | None] = []
    clix.client.trigger(request_for(), after_attempt=lambda n, e, ms, q: seen.append(q))
    assert seen == [Quota(limit=None, remaining=5, reset_at_s=None)]


def test_before_attempt_runs_before_the_request_is_sent(mock_clix: Harness) -> None:
    clix = mock_clix(200)
    seen: list[int] = []
    clix.client.trigger(request_for(), before_attempt=lambda n: seen.append(len(clix.requests)))
    assert seen == [0]


def test_an_error_raised_by_before_attempt_stops_without_sending(mock_clix: Harness) -> None:
    clix = mock_clix(then=200)

    def refuse(number: int) -> None:
        raise RuntimeError("claim lost")

    with pytest.raises(RuntimeError, match="claim lost"):
        clix.client.trigger(request_for(), before_attempt=refuse)
    assert clix.requests == []


# --- secrets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step",
    [
        400,
        401,
        403,
        422,
        503,
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_api_key_never_appears_in_a_raised_error(
    mock_clix: Harness, api_key: str, step: object
) -> None:
    clix = mock_clix(then=step, policy=policy(max_attempts=2))
    with pytest.raises(ClixError) as caught:
        clix.client.trigger(request_for())
    error = caught.value
    assert api_key not in str(error)
    assert api_key not in repr(error)
    assert all(api_key not in repr(arg) for arg in error.args)
    assert error.__cause__ is None


def test_api_key_is_not_in_the_client_repr(mock_clix: Harness, api_key: str) -> None:
    clix = mock_clix()
    assert api_key not in repr(clix.client)
    assert api_key not in str(clix.client)
    assert repr(clix.client) == "ClixClient(base_url='https://clix.test')"


def test_from_settings_requires_credentials(make_settings: Callable[..., Settings]) -> None:
    from config.settings import ConfigurationError

    with pytest.raises(ConfigurationError, match="CLIX_API_KEY"):
        ClixClient.from_settings(make_settings(clix_api_key=None))


def test_from_settings_applies_the_retry_policy(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(clix_max_attempts=7, clix_backoff_initial_s=0.02)
    client = ClixClient.from_settings(
        settings, transport=httpx.MockTransport(lambda r: httpx.Response(200))
    )
    assert client.policy == RetryPolicy.from_settings(settings)
    assert client.policy.max_attempts == 7
    client.close()


# --- concurrency ----------------------------------------------------------------------


def _blocking_client(settings: Settings, barrier: Any, pool_size: int) -> ClixClient:
    def handler(request: httpx.Request) -> httpx.Response:
        barrier.wait()
        return httpx.Response(200, json={"trigger_id": "t-1"})

    return ClixClient.from_settings(
        settings, transport=httpx.MockTransport(handler), pool_size=pool_size
    )


def test_concurrent_requests_each_get_a_client_of_their_own_and_reuse_it(
    settings: Settings,
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    threads = 8
    barrier = threading.Barrier(threads, timeout=10)  # every request in flight at once
    clix = _blocking_client(settings, barrier, pool_size=threads)
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(3):  # rounds: the second and third reuse the first's clients
            ids = list(pool.map(lambda _: clix.send_once(request_for())[0], range(threads)))
            assert ids == ["t-1"] * threads
    assert clix.created == threads
    clix.close()


def test_clients_beyond_the_pool_size_are_closed_when_given_back(settings: Settings) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(4, timeout=10)
    clix = _blocking_client(settings, barrier, pool_size=2)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: clix.send_once(request_for()), range(4)))
    assert clix.created == 4
    assert len(clix._idle) == 2
    assert all(not http.is_closed for http in clix._idle)
