"""The fleet-wide circuit breaker on fakeredis.

Two clocks are at work: Redis ``TIME`` decides when a probe is due (so probe
intervals here are tiny and waited out for real), and the breaker's own
``clock`` (a fake one here) only times the local cache of a "closed" verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import fakeredis
import pytest

from tasks.breaker import BreakerState, CircuitBreaker, Outcome

KEY = "clix:breaker:proj-unit"
TINY_PROBE_S = 0.05


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_breaker(
    fake_redis: fakeredis.FakeRedis, clock: FakeClock
) -> Callable[..., CircuitBreaker]:
    """Factory: a breaker of one worker process (its own window and cache), shared state."""

    def build(**options: object) -> CircuitBreaker:
        values: dict[str, object] = {
            "window": 20,
            "min_samples": 10,
            "failure_ratio": 0.8,
            "probe_s": 5.0,
            "auth_probe_s": 30.0,
            "cache_s": 1.0,
            "clock": clock,
        }
        values.update(options)
        return CircuitBreaker(fake_redis, KEY, **values)  # type: ignore[arg-type]

    return build


def fail(breaker: CircuitBreaker, times: int) -> list[str]:
    return [breaker.record(Outcome.FAILURE) for _ in range(times)]


def open_for_outage(breaker: CircuitBreaker) -> None:
    transitions = fail(breaker, breaker.min_samples)
    assert transitions[-1] == "opened"


# --- closed ---------------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_allows_every_delivery(
    make_breaker: Callable[..., CircuitBreaker], fake_redis: fakeredis.FakeRedis
) -> None:
    breaker = make_breaker()
    assert breaker.allow("owner-a") == (True, "closed")
    assert breaker.allow("owner-b") == (True, "closed")
    assert breaker.state() == BreakerState("closed")
    assert breaker.state().consuming is True
    assert fake_redis.exists(KEY) == 0


def test_successes_while_closed_change_nothing(
    make_breaker: Callable[..., CircuitBreaker], fake_redis: fakeredis.FakeRedis
) -> None:
    breaker = make_breaker()
    assert [breaker.record(Outcome.OK) for _ in range(30)] == [""] * 30
    assert breaker.state().state == "closed"
    assert fake_redis.exists(KEY) == 0


# --- opening --------------------------------------------------------------------------


def test_an_auth_failure_opens_the_breaker_at_once_for_the_fleet(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker, other_worker = make_breaker(), make_breaker()
    assert breaker.record(Outcome.AUTH) == "opened"
    state = breaker.state()
    assert (state.state, state.reason) == ("open", "auth")
    assert state.consuming is False
    assert state.probe_in_s is not None
    assert 29.5 < state.probe_in_s <= 30.0  # auth_probe_s, not probe_s
    assert state.opened_at_ms is not None
    assert abs(state.opened_at_ms / 1000 - time.time()) < 5
    assert breaker.allow("owner-a") == (False, "auth")
    assert other_worker.allow("owner-b") == (False, "auth")


def test_a_storm_of_failures_opens_the_breaker_for_an_outage(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=10, failure_ratio=0.8)
    transitions = fail(breaker, 10)
    assert transitions == [""] * 9 + ["opened"]  # judged only from min_samples on
    state = breaker.state()
    assert (state.state, state.reason) == ("open", "outage")
    assert state.probe_in_s is not None
    assert 4.5 < state.probe_in_s <= 5.0  # probe_s
    assert breaker.allow("owner-a") == (False, "outage")


def test_one_bad_triggers_failures_do_not_open_the_breaker(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    # CLIX_MAX_ATTEMPTS (5) failures of one trigger, under min_samples (10)
    breaker = make_breaker(min_samples=10)
    assert fail(breaker, 5) == [""] * 5
    assert breaker.state().state == "closed"
    assert breaker.allow("owner-a") == (True, "closed")


def test_successes_in_the_window_keep_the_breaker_closed_until_they_slide_out(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(window=20, min_samples=10, failure_ratio=0.8)
    for _ in range(5):
        breaker.record(Outcome.OK)
    assert fail(breaker, 15) == [""] * 15  # 15 of 20 fail: 75 % < 80 %
    assert breaker.state().state == "closed"
    # one more failure pushes the oldest success out: 16 of 20 fail
    assert breaker.record(Outcome.FAILURE) == "opened"


def test_the_failure_window_is_judged_per_worker_process(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    one, two = make_breaker(min_samples=10), make_breaker(min_samples=10)
    assert fail(one, 9) == [""] * 9
    assert fail(two, 9) == [""] * 9
    assert one.state().state == "closed"


def test_an_auth_failure_takes_over_an_outage(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2)
    open_for_outage(breaker)
    assert breaker.record(Outcome.AUTH) == "reopened"
    state = breaker.state()
    assert (state.state, state.reason) == ("open", "auth")
    assert state.probe_in_s is not None
    assert state.probe_in_s > 5.0  # the longer auth probe interval now applies


# --- half-open: the probe -------------------------------------------------------------


def test_once_the_probe_is_due_exactly_one_owner_probes(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    other_worker = make_breaker()
    open_for_outage(breaker)
    assert breaker.allow("owner-a") == (False, "outage")
    time.sleep(TINY_PROBE_S * 2)
    state = breaker.state()
    assert (state.state, state.probe_in_s) == ("half_open", 0.0)
    assert state.consuming is True  # workers take messages again: one may probe
    assert breaker.allow("owner-a") == (True, "probe")
    assert breaker.allow("owner-b") == (False, "wait")
    assert other_worker.allow("owner-c") == (False, "wait")
    assert breaker.allow("owner-a") == (True, "probe")  # the probe may ask again


def test_a_probe_that_succeeds_closes_the_breaker(
    make_breaker: Callable[..., CircuitBreaker], fake_redis: fakeredis.FakeRedis
) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    open_for_outage(breaker)
    time.sleep(TINY_PROBE_S * 2)
    assert breaker.allow("owner-a") == (True, "probe")
    assert breaker.record(Outcome.OK) == "closed"
    assert breaker.state() == BreakerState("closed")
    assert fake_redis.exists(KEY) == 0
    assert make_breaker().allow("owner-b") == (True, "closed")
    # the window started afresh: the failures before the outage no longer count
    assert fail(breaker, 1) == [""]
    assert breaker.state().state == "closed"


def test_a_probe_that_fails_reopens_the_breaker_for_another_interval(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    open_for_outage(breaker)
    opened_at = breaker.state().opened_at_ms
    time.sleep(TINY_PROBE_S * 2)
    assert breaker.allow("owner-a") == (True, "probe")
    assert breaker.record(Outcome.FAILURE) == "reopened"
    state = breaker.state()
    assert (state.state, state.reason) == ("open", "outage")
    assert state.probe_in_s is not None
    assert 0 < state.probe_in_s <= TINY_PROBE_S
    assert state.opened_at_ms == opened_at  # still the same outage
    assert breaker.allow("owner-b") == (False, "outage")
    # and the next interval brings the next probe, for any owner
    time.sleep(TINY_PROBE_S * 2)
    assert breaker.allow("owner-b") == (True, "probe")


def test_an_auth_probe_that_is_refused_again_reopens_with_reason_auth(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(auth_probe_s=TINY_PROBE_S)
    assert breaker.record(Outcome.AUTH) == "opened"
    time.sleep(TINY_PROBE_S * 2)
    assert breaker.allow("owner-a") == (True, "probe")
    assert breaker.record(Outcome.AUTH) == "reopened"
    assert (breaker.state().state, breaker.state().reason) == ("open", "auth")
    assert breaker.allow("owner-a") == (False, "auth")


def test_a_probe_that_never_reports_is_replaced_after_its_timeout(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S, probe_timeout_s=TINY_PROBE_S)
    open_for_outage(breaker)
    time.sleep(TINY_PROBE_S * 2)
    assert breaker.allow("owner-a") == (True, "probe")  # then its worker dies
    assert breaker.allow("owner-b") == (False, "wait")
    time.sleep(TINY_PROBE_S * 2)
    assert breaker.allow("owner-b") == (True, "probe")
    assert breaker.allow("owner-a") == (False, "wait")


# --- state ----------------------------------------------------------------------------


def test_state_reports_open_then_half_open_then_closed_with_probe_in_s(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2, probe_s=0.2)
    open_for_outage(breaker)
    first = breaker.state()
    assert first.state == "open"
    assert first.probe_in_s is not None
    assert 0.1 < first.probe_in_s <= 0.2
    time.sleep(0.05)
    second = breaker.state()
    assert second.probe_in_s is not None
    assert second.probe_in_s < first.probe_in_s  # counting down
    time.sleep(0.2)
    assert (breaker.state().state, breaker.state().probe_in_s) == ("half_open", 0.0)
    assert breaker.state().reason == "outage"
    breaker.allow("owner-a")
    breaker.record(Outcome.OK)
    assert breaker.state() == BreakerState("closed")


def test_state_has_no_side_effects(make_breaker: Callable[..., CircuitBreaker]) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    open_for_outage(breaker)
    time.sleep(TINY_PROBE_S * 2)
    for _ in range(3):
        assert breaker.state().state == "half_open"
    # reading the state handed out no probe token
    assert breaker.allow("owner-a") == (True, "probe")


# --- the local cache of "closed" ------------------------------------------------------


def test_a_closed_verdict_is_cached_for_cache_s(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cached, opener = make_breaker(cache_s=1.0), make_breaker()
    assert cached.allow("owner-a") == (True, "closed")
    assert opener.record(Outcome.AUTH) == "opened"
    # the first worker trusts what it saw until its cache expires
    assert cached.allow("owner-a") == (True, "closed")
    clock.advance(0.9)
    assert cached.allow("owner-a") == (True, "closed")
    clock.advance(0.2)
    assert cached.allow("owner-a") == (False, "auth")
    assert opener.allow("owner-b") == (False, "auth")  # the opener never cached it


def test_a_success_seen_through_a_stale_cache_does_not_close_the_breaker(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    cached, opener = make_breaker(cache_s=1.0), make_breaker()
    cached.allow("owner-a")
    opener.record(Outcome.AUTH)
    assert cached.record(Outcome.OK) == ""  # "closed, as far as we know": nothing sent
    assert opener.state().state == "open"


def test_a_storm_is_reported_even_while_closed_is_cached(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=3, cache_s=60.0)
    assert breaker.allow("owner-a") == (True, "closed")
    assert fail(breaker, 3) == ["", "", "opened"]
    # the transition drops the cache: the worker sees its own opening at once
    assert breaker.allow("owner-a") == (False, "outage")
