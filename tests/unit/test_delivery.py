"""One delivery of ``trigger_campaign`` end to end, in-process.

The real :class:`tasks.delivery.Delivery` runs against a
:class:`tasks.context.WorkerContext` wired to fakeredis and to a Clix client
whose transport is an ``httpx.MockTransport`` (the ``pipeline`` fixture).

Time: the fleet limiter reads the pipeline's standing clock (``p.clock``), so
its waits are asserted exactly; the delivery reads the same standing clock as
its wall clock (``Delivery(wall_clock=...)``, for ``X-RateLimit-Reset``).
Only the circuit breaker runs on Redis ``TIME``, which cannot be faked: its
probe intervals are either long (never reached during a test) or tiny and
slept through generously, so load cannot fail them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import fakeredis
import httpx
import pytest
import redis

from config.keys import Scope
from tasks.breaker import CircuitBreaker, Outcome
from tasks.delivery import REQUEUE_PAUSE_S, RequeueMessage
from tasks.errors import DeadLettered
from tasks.idempotency import ClaimState, new_owner
from tasks.ratelimit import RateLimiter
from tests.unit.conftest import StandingClock

#: the ``pipeline`` fixture: ``pipeline(*steps, then=, on_sleep=, **settings)`` -> Pipeline
Pipe = Callable[..., Any]

KWARGS: dict[str, Any] = {
    "campaign_id": "camp-1",
    "idempotency_key": "order-1",
    "properties": {"order_id": "ORD-1", "item_count": 3},
}


def scope_of(p: Any, kwargs: dict[str, Any] = KWARGS) -> Scope:
    return Scope(p.ctx.settings.clix_project_id, kwargs["campaign_id"], kwargs["idempotency_key"])


def dead_letter(p: Any, kwargs: dict[str, Any] = KWARGS, **options: Any) -> dict[str, Any]:
    """Run a delivery that must dead-letter; return its stored DLQ entry."""
    with pytest.raises(DeadLettered) as caught:
        p.run(kwargs, **options)
    entry = p.ctx.dlq.get(caught.value.entry_id)
    assert entry is not None
    assert entry["reason"] == caught.value.reason
    return dict(entry)


def ambiguous_count(fake_redis: fakeredis.FakeRedis, p: Any) -> int:
    value = fake_redis.hget(p.ctx.store.keys.stats, "ambiguous_duplicates")
    return int(value) if value is not None else 0


def requeue(p: Any, kwargs: dict[str, Any] = KWARGS, **options: Any) -> str:
    """Run a delivery that must put its message back on the queue; return why."""
    with pytest.raises(RequeueMessage) as caught:
        p.run(kwargs, **options)
    return str(caught.value)


def another_worker(p: Any, fake_redis: fakeredis.FakeRedis) -> CircuitBreaker:
    """A breaker of another worker process: same Redis state, its own window and cache."""
    return CircuitBreaker(fake_redis, p.ctx.breaker.state_key)


def healthy_fleet(p: Any, fake_redis: fakeredis.FakeRedis, successes: int = 50) -> None:
    """Other workers' requests succeed: their outcomes are in the fleet's window."""
    other = another_worker(p, fake_redis)
    for _ in range(successes):
        other.record(Outcome.OK)
    assert other.allow("owner-elsewhere") == (True, "closed")  # the check adds them


def fleet_wait_s(p: Any, fake_redis: fakeredis.FakeRedis) -> float:
    """How long another worker's next request would wait for a slot of the fleet limiter."""
    waits: list[float] = []
    limiter = RateLimiter(
        fake_redis,
        p.ctx.limiter.key,
        rate_per_s=1000,
        burst=100,
        sleep=waits.append,
        clock=p.clock,
    )
    return limiter.acquire()


@pytest.fixture
def frozen_wall_clock() -> StandingClock:
    """The wall clock the pipeline hands its deliveries (the limiter's, standing still)."""
    return StandingClock()


# --- success and deduplication --------------------------------------------------------


def test_success_commits_and_returns_the_trigger_id(pipeline: Pipe) -> None:
    p = pipeline(200)
    assert p.run(KWARGS) == {"trigger_id": "trg-1", "deduplicated": False}
    status = p.ctx.store.status(scope_of(p))
    assert (status.state, status.trigger_id) == ("done", "trg-1")
    (request,) = p.clix.requests
    assert json.loads(request.content) == {"properties": {"order_id": "ORD-1", "item_count": 3}}
    assert request.url.path == "/api/v1/campaigns/camp-1:trigger"
    assert p.ctx.dlq.depth() == 0


def test_second_message_with_same_key_sends_nothing(pipeline: Pipe) -> None:
    p = pipeline(200)
    first = p.run(KWARGS, task_id="task-1")
    second = p.run(KWARGS, task_id="task-2")
    assert second == {"trigger_id": first["trigger_id"], "deduplicated": True}
    assert len(p.clix.requests) == 1


def test_redelivered_copy_of_a_done_message_sends_nothing(pipeline: Pipe) -> None:
    p = pipeline(200)
    p.run(KWARGS, task_id="task-1")
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": "trg-1", "deduplicated": True}
    assert len(p.clix.requests) == 1


def test_same_key_in_another_campaign_is_a_different_trigger(pipeline: Pipe) -> None:
    p = pipeline(200, 200)
    p.run(KWARGS, task_id="task-1")
    other = p.run({**KWARGS, "campaign_id": "camp-2"}, task_id="task-2")
    assert other == {"trigger_id": "trg-2", "deduplicated": False}


def test_message_finding_another_message_in_flight_is_a_duplicate(pipeline: Pipe) -> None:
    p = pipeline(clix_duplicate_wait_s=2.0)
    holder = new_owner("task-other")
    p.ctx.store.claim(scope_of(p), holder)
    result = p.run(KWARGS, task_id="task-1")
    # it waited (bounded) for the original, which is still in flight, and says so
    assert result == {"trigger_id": None, "deduplicated": True, "state": "in_flight"}
    assert 0 < sum(p.sleeps.calls) <= 2.0
    assert p.clix.requests == []
    assert p.ctx.store.release(scope_of(p), holder) is True  # their claim is untouched


def test_message_whose_key_is_dead_lettered_sends_nothing(pipeline: Pipe) -> None:
    p = pipeline(400)
    dead_letter(p, task_id="task-1")
    assert p.run(KWARGS, task_id="task-2") == {"trigger_id": None, "deduplicated": True}
    assert len(p.clix.requests) == 1


# --- invalid input --------------------------------------------------------------------


def test_invalid_kwargs_are_dead_lettered_without_a_request(pipeline: Pipe) -> None:
    p = pipeline()
    bad = {**KWARGS, "campaign_id": "camp/1"}
    entry = dead_letter(p, bad, task_id="task-1")
    assert entry["reason"] == "invalid_payload"
    assert entry["error"].startswith("invalid trigger: campaign_id: ")
    assert entry["trigger"] == bad
    assert entry["campaign_id"] == "camp/1"
    assert entry["status_code"] is None
    assert entry["attempts"] == 0
    assert entry["task_id"] == "task-1"
    assert p.clix.requests == []


def test_positional_args_are_dead_lettered_with_the_raw_message(pipeline: Pipe) -> None:
    p = pipeline()
    entry = dead_letter(p, {}, args=("camp-1", "order-1"))
    assert entry["reason"] == "invalid_payload"
    assert "keyword arguments only" in entry["error"]
    assert json.loads(entry["raw"]) == {"args": ["camp-1", "order-1"], "kwargs": {}}
    assert p.clix.requests == []


def test_invalid_payload_leaves_no_ledger_state(pipeline: Pipe) -> None:
    p = pipeline(200)
    dead_letter(p, {**KWARGS, "audience": {"broadcast": "yes"}})
    # the same key, sent correctly, still goes out
    assert p.run(KWARGS, task_id="task-2")["deduplicated"] is False


# --- Clix says no ---------------------------------------------------------------------


def test_400_is_dead_lettered_as_rejected_after_one_attempt(pipeline: Pipe) -> None:
    p = pipeline(400, then=200)
    entry = dead_letter(p, task_id="task-1")
    assert entry["reason"] == "rejected"
    assert entry["status_code"] == 400
    assert entry["attempts"] == 1
    assert entry["error"] == "Clix answered 400: scripted status 400"
    assert entry["trigger"] == KWARGS
    assert entry["project_id"] == p.ctx.settings.clix_project_id
    assert len(p.clix.requests) == 1
    assert p.ctx.store.status(scope_of(p)).dead_entry_id == entry["id"]


@pytest.mark.parametrize("status", [401, 403])
def test_401_requeues_uncounted_and_opens_the_breaker(
    pipeline: Pipe, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    p = pipeline(status, clix_auth_probe_s=30)
    assert "AuthenticationFailed" in requeue(p, task_id="task-401")
    assert len(p.clix.requests) == 1  # never resent
    assert p.ctx.dlq.depth() == 0  # the trigger is fine: the credentials are not
    breaker = p.ctx.breaker.state()
    assert (breaker.state, breaker.reason) == ("open", "auth")
    assert breaker.probe_in_s is not None
    # the auth probe interval (30 s), not the outage one (5 s); seconds of slack for load
    assert 5 < breaker.probe_in_s <= 30
    meta = p.ctx.store.meta(scope_of(p))
    # the claim is given back uncounted: a broken key never pushes messages
    # towards the redelivery limit; the request it sent stays counted
    assert (meta["deliveries"], meta["attempts"], meta["sending"]) == ("0", "1", "0")
    assert p.ctx.store.status(scope_of(p)).state == "unknown"
    assert p.sleeps.calls == [REQUEUE_PAUSE_S]
    # the operator is told which variables to fix
    assert any(
        "CLIX_API_KEY" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
    )


def assert_nothing_counted(p: Pipe) -> None:
    """The claim was given back with nothing sent: no delivery, no attempt, no lease."""
    meta = p.ctx.store.meta(scope_of(p))
    assert (meta.get("deliveries"), meta.get("attempts"), meta.get("sending")) == ("0", "0", "0")
    assert p.ctx.store.status(scope_of(p)).state == "unknown"


def test_while_the_breaker_is_open_a_delivery_sends_nothing_and_counts_nothing(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline()
    assert another_worker(p, fake_redis).record(Outcome.AUTH) == "opened"
    assert "BreakerOpen" in requeue(p, task_id="task-1")
    assert p.clix.requests == []
    assert p.ctx.dlq.depth() == 0
    assert_nothing_counted(p)


def test_a_probe_that_is_accepted_closes_the_breaker_and_sends(
    pipeline: Pipe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    p = pipeline(401, 200, clix_auth_probe_s=0.05)
    requeue(p, task_id="task-1")
    # opened for auth (whether it is still "open" depends on how fast this runs:
    # test_401_requeues_uncounted_and_opens_the_breaker asserts that)
    assert p.ctx.breaker.state().reason == "auth"
    time.sleep(0.5)  # generously past the probe time (Redis TIME: a real wait)
    assert p.ctx.breaker.state().state == "half_open"
    # the redelivered message is the probe; the key works again
    probe = p.delivery(KWARGS, task_id="task-1")
    assert probe.run() == {"trigger_id": "trg-2", "deduplicated": False}
    assert p.ctx.breaker.state().state == "closed"
    outcomes = [getattr(r, "clix", {}).get("outcome") for r in caplog.records]
    assert "breaker_probe" in outcomes
    assert probe.claim is not None
    assert probe.claim.deliveries == 1  # the 401's delivery was not counted


def test_repeated_401s_never_reach_the_redelivery_limit(pipeline: Pipe) -> None:
    p = pipeline(then=401, clix_auth_probe_s=0.01, clix_redelivery_limit=2)
    for _ in range(4):  # more redeliveries than the limit allows
        time.sleep(0.05)  # each redelivery is the next probe (load only waits longer)
        requeue(p, task_id="task-1")
    assert len(p.clix.requests) == 4  # one probe per probe interval, no more
    assert p.ctx.dlq.depth() == 0
    assert p.ctx.store.meta(scope_of(p))["deliveries"] == "0"
    assert p.ctx.breaker.state().reason == "auth"


def test_503_forever_is_dead_lettered_as_retries_exhausted(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(then=503, clix_max_attempts=3)
    healthy_fleet(p, fake_redis)  # the rest of the fleet succeeds: this trigger's trouble
    entry = dead_letter(p, task_id="task-1")
    assert entry["reason"] == "retries_exhausted"
    assert entry["attempts"] == 3
    assert entry["status_code"] == 503
    assert len(p.clix.requests) == 3
    assert len(p.clix.sleeps.calls) == 2
    # one bad trigger's failures stay under the breaker's minimum sample count
    assert p.ctx.breaker.state().state == "closed"
    scope = scope_of(p)
    keys = p.ctx.store.keys
    assert fake_redis.exists(keys.lease(scope)) == 0
    assert fake_redis.get(keys.dead(scope)) == entry["id"].encode()
    assert p.ctx.store.claim(scope, new_owner("task-9")).state is ClaimState.DEAD


def test_network_errors_forever_are_retries_exhausted_with_null_status(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(then=httpx.ConnectError("connection refused"), clix_max_attempts=2)
    healthy_fleet(p, fake_redis)
    entry = dead_letter(p)
    assert entry["reason"] == "retries_exhausted"
    assert entry["status_code"] is None
    assert entry["attempts"] == 2
    assert entry["error"].startswith("network error: ConnectError")


def test_503_forever_on_an_otherwise_idle_fleet_is_dead_lettered(pipeline: Pipe) -> None:
    # nothing else in the window: no evidence of an outage, the budget decides
    p = pipeline(then=503, clix_max_attempts=3)
    assert dead_letter(p)["reason"] == "retries_exhausted"


def test_503_forever_while_the_rest_of_the_fleet_fails_goes_back_to_the_queue_uncounted(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(then=503, clix_max_attempts=3)
    other = another_worker(p, fake_redis)
    for _ in range(3):  # another worker's requests fail as well
        other.record(Outcome.FAILURE)
    assert "ServerError" in requeue(p, task_id="task-1")
    assert p.ctx.dlq.depth() == 0
    meta = p.ctx.store.meta(scope_of(p))
    assert (meta["deliveries"], meta["attempts"], meta["sending"]) == ("0", "3", "0")
    assert p.ctx.store.status(scope_of(p)).state == "unknown"  # free for the next delivery


def test_an_outage_seen_by_other_workers_requeues_the_first_failing_trigger_too(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    healthy_fleet(p := pipeline(then=503, clix_max_attempts=2), fake_redis, successes=2)
    other = another_worker(p, fake_redis)
    for _ in range(6):  # the rest of the fleet starts failing as well
        other.record(Outcome.FAILURE)
    assert "ServerError" in requeue(p)
    assert p.ctx.dlq.depth() == 0


def test_503_then_200_succeeds_within_one_delivery(pipeline: Pipe) -> None:
    p = pipeline(503, 503, 200, clix_max_attempts=3)
    delivery = p.delivery(KWARGS)
    assert delivery.run() == {"trigger_id": "trg-3", "deduplicated": False}
    assert delivery.attempts == 3


def test_429_is_waited_out_and_then_sent(pipeline: Pipe) -> None:
    p = pipeline(httpx.Response(429, headers={"Retry-After": "1.5"}), 200)
    delivery = p.delivery(KWARGS)
    assert delivery.run()["trigger_id"] == "trg-2"
    assert p.clix.sleeps.calls == [1.5]
    # the retry also waited for the fleet limiter held back by the 429
    # (with real sleeps the backoff has already spent that time)
    assert p.limiter_sleeps.calls == [1.5]  # exactly: the limiter's clock stands still
    assert p.ctx.breaker.state().state == "closed"  # a 429 is no failure of Clix


def test_429_holds_the_whole_fleet_for_retry_after(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(httpx.Response(429, headers={"Retry-After": "1.5"}), 200)
    p.run(KWARGS)
    # another worker's next request (at the same instant) waits out the hold,
    # plus the one slot (1 ms at 1,000/s) the retry took after it
    assert fleet_wait_s(p, fake_redis) == 1.501


def test_429_hold_of_the_fleet_is_capped_by_retry_after_max(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(httpx.Response(429, headers={"Retry-After": "600"}), 200)
    p.run(KWARGS)
    assert p.clix.sleeps.calls == [2.0]  # clix_retry_after_max_s of the test settings
    assert p.limiter_sleeps.calls == [2.0]


def test_429s_beyond_their_wait_budget_requeue_uncounted(pipeline: Pipe) -> None:
    p = pipeline(
        then=httpx.Response(429, headers={"Retry-After": "1"}), clix_rate_limited_max_wait_s=2
    )
    assert "RateLimited" in requeue(p, task_id="task-1")
    assert len(p.clix.requests) == 3  # two waits of 1 s fit the 2 s budget, a third not
    assert p.ctx.dlq.depth() == 0
    meta = p.ctx.store.meta(scope_of(p))
    assert (meta["deliveries"], meta["attempts"]) == ("0", "3")
    assert p.ctx.store.status(scope_of(p)).state == "unknown"
    assert p.ctx.breaker.state().state == "closed"


def nearly_spent(reset_at_s: float) -> httpx.Response:
    headers = {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "10",  # 1 %, under the 2 % watermark
        "X-RateLimit-Reset": str(reset_at_s),
    }
    return httpx.Response(200, json={"trigger_id": "trg-q"}, headers=headers)


def test_default_settings_end_a_delivery_of_429s_before_the_visibility_timeout(
    pipeline: Pipe,
) -> None:
    monotonic = StandingClock(0.0)

    def slow_429(request: httpx.Request) -> httpx.Response:
        monotonic.advance(9.9)  # Clix answers at the edge of the request timeout
        return httpx.Response(429, headers={"retry-after": "20"}, json={"error": "slow down"})

    p = pipeline(
        then=slow_429,
        monotonic=monotonic,
        clix_max_attempts=5,
        clix_backoff_initial_s=0.5,
        clix_backoff_max_s=8.0,
        clix_retry_deadline_s=30.0,
        clix_retry_after_max_s=20.0,
        clix_request_timeout_s=10.0,
    )
    settings = p.ctx.settings
    assert settings.clix_visibility_timeout_s == 60  # the default under test
    # waiting out 429s (and the fleet's hold) ends in a requeue, uncounted
    assert "RateLimit" in requeue(p)
    # every wait and request ended before the delivery's deadline; the requeue
    # pause comes on top and still ends before the broker would redeliver
    ended = monotonic.now - REQUEUE_PAUSE_S
    assert ended <= settings.delivery_deadline_s < settings.clix_visibility_timeout_s
    assert monotonic.now < settings.clix_visibility_timeout_s


def test_default_settings_end_a_delivery_of_slow_5xx_before_the_visibility_timeout(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    # the retry budget (59 s, 20 attempts) outlasts the delivery's deadline (55 s):
    # the deadline stops the retries, and the trigger goes back to the queue,
    # counted, instead of to the DLQ with its budget unspent
    monotonic = StandingClock(0.0)

    def slow_503(request: httpx.Request) -> httpx.Response:
        monotonic.advance(9.9)
        return httpx.Response(503, json={"error": "down"})

    p = pipeline(
        then=slow_503,
        monotonic=monotonic,
        clix_max_attempts=20,
        clix_backoff_initial_s=0.5,
        clix_backoff_max_s=8.0,
        clix_retry_deadline_s=59.0,
        clix_request_timeout_s=10.0,
    )
    healthy_fleet(p, fake_redis)
    assert "OutOfTime" in requeue(p)
    assert p.ctx.dlq.depth() == 0
    assert p.ctx.store.meta(scope_of(p))["deliveries"] == "1"  # counted
    assert monotonic.now - REQUEUE_PAUSE_S <= p.ctx.settings.delivery_deadline_s


def _late_503(pipeline: Pipe) -> Any:
    """A pipeline whose Clix answers 503 once all but a second of the deadline is gone."""
    monotonic = StandingClock(0.0)

    def late_503(request: httpx.Request) -> httpx.Response:
        # as if the slot and the answer took all but a second of the deadline
        monotonic.advance(p.ctx.settings.delivery_deadline_s - 1.0)
        return httpx.Response(503, json={"error": "down"})

    p = pipeline(then=late_503, monotonic=monotonic, clix_max_attempts=5)
    return p


def test_a_5xx_after_a_long_wait_for_a_rate_limit_slot_is_requeued_not_dead_lettered(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    # the delivery's time went on waiting for its slot; the 503 that follows
    # cannot be retried within the deadline, but one attempt of 5 is no spent budget
    p = _late_503(pipeline)
    healthy_fleet(p, fake_redis)
    assert "OutOfTime" in requeue(p)
    assert len(p.clix.requests) == 1
    assert p.ctx.dlq.depth() == 0
    meta = p.ctx.store.meta(scope_of(p))
    assert (meta["deliveries"], meta["attempts"], meta["sending"]) == ("1", "1", "0")
    # the next delivery finds the scope free and sends again
    assert p.ctx.store.status(scope_of(p)).state == "unknown"


def test_a_retry_cut_short_by_the_deadline_during_an_outage_is_requeued_uncounted(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = _late_503(pipeline)
    other = another_worker(p, fake_redis)
    for _ in range(3):  # the rest of the fleet fails as well: an outage
        other.record(Outcome.FAILURE)
    assert "OutOfTime" in requeue(p)
    assert p.ctx.store.meta(scope_of(p))["deliveries"] == "0"  # waiting for Clix is free


def test_low_remaining_quota_slows_the_fleet_down_until_the_reset(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis, frozen_wall_clock: StandingClock
) -> None:
    p = pipeline(nearly_spent(frozen_wall_clock.now + 1.0))
    assert p.run(KWARGS)["trigger_id"] == "trg-q"
    # the reset is wall time, frozen at the limiter's instant: exactly 1 s away
    assert fleet_wait_s(p, fake_redis) == 1.0


def test_low_remaining_quota_hold_is_capped_by_retry_after_max(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis, frozen_wall_clock: StandingClock
) -> None:
    p = pipeline(nearly_spent(frozen_wall_clock.now + 600.0))
    assert p.run(KWARGS)["trigger_id"] == "trg-q"
    assert fleet_wait_s(p, fake_redis) == 2.0  # clix_retry_after_max_s of the test settings


def test_quota_reset_is_measured_on_clixs_clock_when_ours_is_a_minute_behind(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    # Clix's clock (its Date header) says 1,800,000,060; ours says 1,800,000,000.
    clix_now = 1_800_000_060.0
    answer = nearly_spent(clix_now + 1.0)
    answer.headers["Date"] = formatdate(clix_now, usegmt=True)
    p = pipeline(answer, clix_retry_after_max_s=30)
    p.clock.now = clix_now - 60.0
    p.run(KWARGS)
    # one second until the reset, not the 61 our clock would suggest (nor the cap)
    assert fleet_wait_s(p, fake_redis) == 1.0


def test_ample_remaining_quota_does_not_slow_the_fleet(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis, frozen_wall_clock: StandingClock
) -> None:
    ample = httpx.Response(
        200,
        json={"trigger_id": "trg-q"},
        headers={
            "X-RateLimit-Limit": "1000",
            "X-RateLimit-Remaining": "900",
            "X-RateLimit-Reset": str(frozen_wall_clock.now + 1.0),
        },
    )
    p = pipeline(ample)
    p.run(KWARGS)
    assert fleet_wait_s(p, fake_redis) == 0


# --- the circuit breaker and the rate limiter -----------------------------------------


def test_a_5xx_storm_opens_the_breaker_and_requeues_instead_of_dead_lettering(
    pipeline: Pipe,
) -> None:
    # a probe interval no test run reaches, so the breaker is surely still open below
    p = pipeline(
        then=503, clix_max_attempts=3, clix_breaker_min_samples=2, clix_breaker_probe_s=300
    )
    assert "BreakerOpen" in requeue(p, task_id="task-1")
    # the second failure opened the breaker: the third attempt never went out
    assert len(p.clix.requests) == 2
    assert p.ctx.dlq.depth() == 0
    breaker = p.ctx.breaker.state()
    assert (breaker.state, breaker.reason) == ("open", "outage")
    meta = p.ctx.store.meta(scope_of(p))
    assert (meta["deliveries"], meta["attempts"]) == ("0", "2")


def test_rejections_are_answers_and_do_not_open_the_breaker(pipeline: Pipe) -> None:
    p = pipeline(then=400, clix_breaker_min_samples=2)
    for n in range(3):
        dead_letter(p, {**KWARGS, "idempotency_key": f"order-{n}"}, task_id=f"task-{n}")
    assert p.ctx.breaker.state().state == "closed"


def test_every_request_takes_a_slot_of_the_fleet_limiter(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(503, 503, 200, clix_rate_limit_per_s=10, clix_rate_limit_burst=1)
    p.run(KWARGS)
    # three requests at 10/s with no burst: waits of exactly 0, 0.1 and 0.2 s
    # (recorded, not slept, on a clock that stands still)
    assert p.limiter_sleeps.calls == [0.1, 0.2]
    assert fake_redis.pttl(p.ctx.limiter.key) > 0


def test_a_far_slot_extends_the_lease_while_waiting_without_counting_an_attempt(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    lease_pttl: list[int] = []

    def hold_the_fleet(call: int, seconds: float) -> None:  # during the backoff
        p.ctx.limiter.hold(12)  # further away than clix_rate_limit_max_wait_s (5 s)

    def time_passes(call: int, seconds: float) -> None:  # the limiter's bounded waits
        lease = p.ctx.store.keys.lease(scope_of(p))
        lease_pttl.append(fake_redis.pttl(lease))
        if call == 1:
            fake_redis.pexpire(lease, 100)  # almost expired after a long wait
        else:
            fake_redis.delete(p.ctx.limiter.key)  # the hold is over

    p = pipeline(503, 200, on_sleep=hold_the_fleet, on_limiter_sleep=time_passes)
    delivery = p.delivery(KWARGS)
    assert delivery.run()["trigger_id"] == "trg-2"
    assert p.limiter_sleeps.calls == [5.0, 5.0]
    # after the first bounded wait the lease was extended back to its full length
    assert lease_pttl[1] > 1_000
    assert delivery.attempts == 2


def test_a_lease_lost_while_waiting_for_a_slot_stops_sending(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    holder = new_owner("task-2")

    def hold_the_fleet(call: int, seconds: float) -> None:
        p.ctx.limiter.hold(12)

    def another_delivery_takes_over(call: int, seconds: float) -> None:
        fake_redis.delete(p.ctx.store.keys.lease(scope_of(p)))
        p.ctx.store.claim(scope_of(p), holder)

    p = pipeline(
        503, then=200, on_sleep=hold_the_fleet, on_limiter_sleep=another_delivery_takes_over
    )
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": None, "deduplicated": True}
    assert len(p.clix.requests) == 1
    assert fake_redis.get(p.ctx.store.keys.lease(scope_of(p))) == holder.encode()


def test_a_lease_that_lapsed_while_waiting_for_a_slot_is_taken_again_and_the_trigger_sent(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    def hold_the_fleet(call: int, seconds: float) -> None:
        p.ctx.limiter.hold(12)

    def lease_lapses(call: int, seconds: float) -> None:  # nobody else takes the scope
        fake_redis.delete(p.ctx.store.keys.lease(scope_of(p)))
        if call == 2:
            fake_redis.delete(p.ctx.limiter.key)

    p = pipeline(503, then=200, on_sleep=hold_the_fleet, on_limiter_sleep=lease_lapses)
    # never acknowledged as a duplicate of itself: it goes on and sends
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": "trg-2", "deduplicated": False}
    assert p.ctx.store.status(scope_of(p)).trigger_id == "trg-2"


def test_no_rate_limit_slot_in_sight_requeues_uncounted_and_unsent(pipeline: Pipe) -> None:
    p = pipeline()
    p.ctx.limiter.hold(3_600)  # e.g. Clix said to wait an hour
    assert "RateLimitWaitTooLong" in requeue(p, task_id="task-1")
    assert p.clix.requests == []
    # bounded waits of clix_rate_limit_max_wait_s until the limiter gives up
    assert p.limiter_sleeps.calls
    assert set(p.limiter_sleeps.calls) == {5.0}
    assert sum(p.limiter_sleeps.calls) <= p.ctx.limiter.give_up_s
    assert_nothing_counted(p)
    assert p.ctx.dlq.depth() == 0


def test_dlq_attempts_count_requests_of_every_delivery(pipeline: Pipe) -> None:
    p = pipeline(400)
    scope = scope_of(p)
    earlier = new_owner("task-1")
    # an earlier delivery sent twice (the claim registered its first request,
    # the renewal its retry), then gave the claim back
    p.ctx.store.claim(scope, earlier)
    p.ctx.store.not_sent(scope, earlier)
    p.ctx.store.renew(scope, earlier, 2)
    p.ctx.store.not_sent(scope, earlier)
    p.ctx.store.release(scope, earlier)
    entry = dead_letter(p, task_id="task-1")
    assert entry["attempts"] == 3


# --- redelivery limit -----------------------------------------------------------------


def redeliver(p: Any, times: int, task_id: str = "task-1") -> None:
    """Deliveries that claimed the key and then vanished (their claims given back)."""
    for _ in range(times):
        owner = new_owner(task_id)
        assert p.ctx.store.claim(scope_of(p), owner).state is ClaimState.CLAIMED
        p.ctx.store.release(scope_of(p), owner)


def test_delivery_over_the_redelivery_limit_is_dead_lettered_without_a_request(
    pipeline: Pipe,
) -> None:
    p = pipeline(clix_redelivery_limit=3)
    redeliver(p, 3)
    entry = dead_letter(p, task_id="task-1")
    assert entry["reason"] == "redelivery_limit"
    assert "delivered 4 times (limit 3)" in entry["error"]
    assert p.clix.requests == []
    assert p.ctx.store.claim(scope_of(p), new_owner("task-2")).state is ClaimState.DEAD


def test_delivery_at_the_redelivery_limit_still_sends(pipeline: Pipe) -> None:
    p = pipeline(200, clix_redelivery_limit=3)
    redeliver(p, 2)
    assert p.run(KWARGS, task_id="task-1")["deduplicated"] is False


# --- a copy of the same message -------------------------------------------------------


def test_copy_waits_while_the_first_delivery_runs_and_returns_its_result(
    pipeline: Pipe, sleep_recorder: Callable[..., Any]
) -> None:
    p = pipeline()
    scope = scope_of(p)
    first = new_owner("task-1")
    p.ctx.store.claim(scope, first)

    def first_delivery_finishes(call: int, seconds: float) -> None:
        if call == 2:
            p.ctx.store.commit(scope, first, "trg-first")

    sleeps = sleep_recorder(first_delivery_finishes)
    result = p.run(KWARGS, task_id="task-1", sleep=sleeps)
    assert result == {"trigger_id": "trg-first", "deduplicated": True}
    assert len(sleeps.calls) == 2
    assert all(0 < s <= 1.0 for s in sleeps.calls)
    assert p.clix.requests == []


def test_copy_takes_over_when_the_first_deliverys_lease_expires(
    pipeline: Pipe, sleep_recorder: Callable[..., Any], fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(200)
    scope = scope_of(p)
    first = new_owner("task-1")
    p.ctx.store.claim(scope, first)
    p.ctx.store.not_sent(scope, first)  # its request certainly failed; then it died
    sleeps = sleep_recorder(lambda call, s: fake_redis.delete(p.ctx.store.keys.lease(scope)))
    copy = p.delivery(KWARGS, task_id="task-1", sleep=sleeps)
    assert copy.run()["deduplicated"] is False
    assert len(sleeps.calls) == 1
    assert ambiguous_count(fake_redis, p) == 0
    assert copy.attempts == 2  # the dead delivery's request and its own


def test_copy_that_waited_for_its_own_delivery_passes_the_breaker_before_sending(
    pipeline: Pipe, sleep_recorder: Callable[..., Any], fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(200)
    scope = scope_of(p)
    first = new_owner("task-1")
    p.ctx.store.claim(scope, first)

    def first_dies_while_the_breaker_opens(call: int, seconds: float) -> None:
        another_worker(p, fake_redis).record(Outcome.AUTH)
        fake_redis.delete(p.ctx.store.keys.lease(scope))

    sleeps = sleep_recorder(first_dies_while_the_breaker_opens)
    with pytest.raises(RequeueMessage, match="BreakerOpen"):
        p.run(KWARGS, task_id="task-1", sleep=sleeps)
    assert p.clix.requests == []


def test_copy_that_waited_for_its_own_delivery_takes_a_rate_limit_slot(
    pipeline: Pipe, sleep_recorder: Callable[..., Any], fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(200)
    scope = scope_of(p)
    p.ctx.store.claim(scope, new_owner("task-1"))

    def first_dies_while_clix_says_wait(call: int, seconds: float) -> None:
        p.ctx.limiter.hold(3)
        fake_redis.delete(p.ctx.store.keys.lease(scope))

    p.run(KWARGS, task_id="task-1", sleep=sleep_recorder(first_dies_while_clix_says_wait))
    assert len(p.clix.requests) == 1
    assert p.limiter_sleeps.calls
    assert p.limiter_sleeps.calls[0] >= 2.9


def test_a_duplicate_never_takes_the_breakers_probe_token(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(200, clix_auth_probe_s=0.05)
    assert p.run(KWARGS, task_id="task-1")["deduplicated"] is False
    p.ctx.breaker.record(Outcome.AUTH)
    time.sleep(0.5)  # past the probe time (Redis TIME: a real wait)
    assert p.run(KWARGS, task_id="task-2")["deduplicated"] is True
    # the token is still there for a delivery that will send
    assert another_worker(p, fake_redis).allow("owner-sender") == (True, "probe")


def test_take_over_from_a_delivery_that_died_right_after_claiming_is_counted(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    # the claim registers the first request: from the ledger a death between
    # claim and send looks like a death mid-request, so it is counted (never missed)
    p = pipeline(200)
    scope = scope_of(p)
    p.ctx.store.claim(scope, new_owner("task-1"))
    fake_redis.delete(p.ctx.store.keys.lease(scope))
    assert p.run(KWARGS, task_id="task-1")["deduplicated"] is False
    assert ambiguous_count(fake_redis, p) == 1


def test_take_over_from_a_delivery_that_died_mid_request_is_counted(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(200)
    scope = scope_of(p)
    dead = new_owner("task-1")
    p.ctx.store.claim(scope, dead)
    p.ctx.store.renew(scope, dead, 2)  # it was sending when it was killed
    fake_redis.delete(p.ctx.store.keys.lease(scope))  # its lease ran out
    assert p.run(KWARGS, task_id="task-1")["deduplicated"] is False
    assert ambiguous_count(fake_redis, p) == 1


def test_claim_lost_while_retrying_stops_sending(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    holder = new_owner("task-2")

    def another_delivery_takes_over(call: int, seconds: float) -> None:
        fake_redis.delete(p.ctx.store.keys.lease(scope_of(p)))
        p.ctx.store.claim(scope_of(p), holder)

    p = pipeline(503, then=200, on_sleep=another_delivery_takes_over)
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": None, "deduplicated": True}
    assert len(p.clix.requests) == 1
    assert p.ctx.dlq.depth() == 0
    assert fake_redis.get(p.ctx.store.keys.lease(scope_of(p))) == holder.encode()


# --- our own infrastructure fails -----------------------------------------------------


def test_redis_error_in_the_send_path_requeues_and_releases_the_claim(pipeline: Pipe) -> None:
    p = pipeline(redis.ConnectionError("store went away"))
    with pytest.raises(RequeueMessage, match="ConnectionError: store went away"):
        p.run(KWARGS, task_id="task-1")
    assert p.ctx.store.status(scope_of(p)).state == "unknown"
    assert p.ctx.dlq.depth() == 0
    assert p.sleeps.calls == [REQUEUE_PAUSE_S]
    assert p.ctx.store.claim(scope_of(p), new_owner("task-1")).state is ClaimState.CLAIMED


def test_a_bug_in_the_send_path_requeues_instead_of_dead_lettering(pipeline: Pipe) -> None:
    p = pipeline(RuntimeError("unexpected"))
    with pytest.raises(RequeueMessage, match="RuntimeError"):
        p.run(KWARGS)
    assert p.ctx.dlq.depth() == 0
    assert p.ctx.store.status(scope_of(p)).state == "unknown"


def test_a_store_blip_after_clix_accepted_is_waited_out_and_committed_once(
    pipeline: Pipe, fake_server: fakeredis.FakeServer
) -> None:
    def accept_while_redis_drops(request: httpx.Request) -> httpx.Response:
        fake_server.connected = False
        return httpx.Response(200, json={"trigger_id": "trg-kept"})

    def back_after_3_s(_: int, __: float) -> None:
        if p.monotonic.now >= 3.0:
            fake_server.connected = True

    p = pipeline(accept_while_redis_drops, on_delivery_sleep=back_after_3_s)
    assert p.run(KWARGS) == {"trigger_id": "trg-kept", "deduplicated": False}
    assert len(p.clix.requests) == 1
    assert p.ctx.store.status(scope_of(p)).trigger_id == "trg-kept"
    assert 3.0 <= sum(p.sleeps.calls) < 5.0  # short pauses, up to a second apart
    assert max(p.sleeps.calls) <= 1.0


def test_store_away_past_the_lease_after_clix_accepted_keeps_the_send_on_record(
    pipeline: Pipe, fake_server: fakeredis.FakeServer, fake_redis: fakeredis.FakeRedis
) -> None:
    def accept_while_redis_dies(request: httpx.Request) -> httpx.Response:
        fake_server.connected = False
        return httpx.Response(200, json={"trigger_id": "trg-lost"})

    p = pipeline(accept_while_redis_dies, 200, clix_lease_s=20)
    with pytest.raises(RequeueMessage):
        p.run(KWARGS, task_id="task-1")
    # it kept trying to commit for as long as its lease lasted, no longer
    assert 15 <= p.monotonic.now <= 20 + 1 + 1  # (+ one pause, + the requeue pause)
    fake_server.connected = True
    scope = scope_of(p)
    # the claim was not given back: `sending` stays set for the next delivery to see
    assert p.ctx.store.meta(scope)["sending"] == "1"
    fake_redis.delete(p.ctx.store.keys.lease(scope))  # the lease expires
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": "trg-2", "deduplicated": False}
    assert ambiguous_count(fake_redis, p) == 1  # the resend is the counted duplicate


def test_a_store_error_telling_the_fleet_about_an_accepted_trigger_does_not_resend_it(
    pipeline: Pipe, fake_server: fakeredis.FakeServer
) -> None:
    # Clix says the quota is nearly spent, so the delivery asks the limiter to
    # hold the fleet back: that write fails with the store away. The trigger is
    # still committed once the store is back, and sent once.
    quota = {"x-ratelimit-limit": "1000", "x-ratelimit-remaining": "0"}

    def accept_while_redis_drops(request: httpx.Request) -> httpx.Response:
        fake_server.connected = False
        return httpx.Response(200, json={"trigger_id": "trg-1"}, headers=quota)

    def back(_: int, __: float) -> None:
        fake_server.connected = True

    p = pipeline(accept_while_redis_drops, on_delivery_sleep=back)
    assert p.run(KWARGS) == {"trigger_id": "trg-1", "deduplicated": False}
    assert len(p.clix.requests) == 1
    assert p.ctx.store.status(scope_of(p)).trigger_id == "trg-1"


def test_redis_down_before_the_claim_requeues_without_sending(
    pipeline: Pipe, fake_server: fakeredis.FakeServer
) -> None:
    p = pipeline()
    fake_server.connected = False
    with pytest.raises(RequeueMessage, match="ConnectionError"):
        p.run(KWARGS)
    assert p.clix.requests == []


# --- ambiguous duplicates -------------------------------------------------------------


def test_read_timeout_then_200_counts_an_ambiguous_duplicate(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(httpx.ReadTimeout("timed out"), 200)
    assert p.run(KWARGS) == {"trigger_id": "trg-2", "deduplicated": False}
    assert ambiguous_count(fake_redis, p) == 1


def test_connect_error_then_200_counts_no_duplicate(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(httpx.ConnectError("refused"), 503, 200)
    assert p.run(KWARGS)["trigger_id"] == "trg-3"
    assert ambiguous_count(fake_redis, p) == 0


# --- secrets --------------------------------------------------------------------------


def test_api_key_is_never_logged_or_dead_lettered(
    pipeline: Pipe,
    api_key: str,
    fake_redis: fakeredis.FakeRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    p = pipeline(httpx.ReadTimeout("timed out"), 503, 422, 200)
    with pytest.raises(DeadLettered):
        p.run(KWARGS, task_id="task-1")
    with pytest.raises(RequeueMessage):
        pipeline(redis.ConnectionError("down")).run({**KWARGS, "idempotency_key": "o-2"})
    assert p.run({**KWARGS, "idempotency_key": "o-3"})["trigger_id"] == "trg-4"
    assert caplog.records  # the outcomes were logged
    for record in caplog.records:
        assert api_key not in record.getMessage()
        assert api_key not in repr(getattr(record, "clix", ""))
    for key in fake_redis.keys("*"):
        dump = fake_redis.dump(key)
        assert dump is not None
        assert api_key.encode() not in dump
