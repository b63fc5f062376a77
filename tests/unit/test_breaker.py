"""The fleet-wide circuit breaker on fakeredis.

Two clocks are at work: Redis ``TIME`` decides when a probe is due, and the
breaker's own ``clock`` (a fake one here) only times the local cache of a
"closed" verdict. Redis ``TIME`` cannot be faked, so every assertion on it is
one that load cannot break:

* "not due yet" is asserted only on intervals no test run reaches (tens of
  seconds: the fixture's defaults);
* "due" is asserted only after sleeping generously past a tiny interval
  (:data:`TINY_PROBE_S`, slept :data:`PAST_TINY_S`), as a sleep is never shorter.

A test that needs both uses two breakers on the same key (two worker
processes): the probe and reopen intervals come from whichever records or asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import fakeredis
import pytest

from tasks.breaker import BreakerState, CircuitBreaker, Outcome

KEY = "clix:breaker:proj-unit"
WINDOW = KEY + ":window"
TINY_PROBE_S = 0.05  # intervals meant to pass during a test...
PAST_TINY_S = 0.25  # ...and how long the test sleeps to be sure they have
PROBE_S = 30.0  # intervals meant never to pass during a test
AUTH_PROBE_S = 120.0


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
            "window_s": 10,
            "min_samples": 10,
            "failure_ratio": 0.8,
            "probe_s": PROBE_S,
            "auth_probe_s": AUTH_PROBE_S,
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


def test_successes_while_closed_cost_no_round_trip_until_the_next_check(
    make_breaker: Callable[..., CircuitBreaker], fake_redis: fakeredis.FakeRedis, clock: FakeClock
) -> None:
    breaker = make_breaker()
    assert [breaker.record(Outcome.OK) for _ in range(30)] == [""] * 30
    assert breaker.state().state == "closed"
    assert fake_redis.exists(KEY) == 0
    assert fake_redis.exists(WINDOW) == 0  # batched in memory
    clock.advance(2.0)  # the cached "closed" expired: the next check adds them
    assert breaker.allow("owner-a") == (True, "closed")
    assert sum(int(v) for v in fake_redis.hvals(WINDOW)) == 30


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
    assert PROBE_S < state.probe_in_s <= AUTH_PROBE_S  # auth_probe_s, not probe_s
    assert state.opened_at_ms is not None
    assert abs(state.opened_at_ms / 1000 - time.time()) < 60  # Redis TIME: the wall clock
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
    assert PROBE_S / 2 < state.probe_in_s <= PROBE_S  # probe_s (slack for load)
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
    redis_clock = FakeClock()
    breaker = make_breaker(window_s=10, min_samples=10, failure_ratio=0.8, redis_clock=redis_clock)
    for _ in range(5):
        breaker.record(Outcome.OK)
    assert fail(breaker, 15) == [""] * 15  # 15 of 20 fail: 75 % < 80 %
    assert breaker.state().state == "closed"
    redis_clock.advance(10.0)  # the window moved on: those requests no longer count
    assert fail(breaker, 10) == [""] * 9 + ["opened"]


def test_the_failure_window_is_shared_by_the_fleet(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    # two worker processes each see 5 failures: together they are an outage
    one, two = make_breaker(min_samples=10), make_breaker(min_samples=10)
    assert fail(one, 5) == [""] * 5
    assert fail(two, 5) == [""] * 4 + ["opened"]
    assert one.allow("owner-a") == (False, "outage")


def test_successes_elsewhere_in_the_fleet_keep_failures_from_opening_it(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    healthy, failing = make_breaker(), make_breaker(min_samples=10)
    for _ in range(40):
        healthy.record(Outcome.OK)
    clock.advance(2.0)
    healthy.allow("owner-a")  # its periodic check adds the successes to the window
    assert fail(failing, 10) == [""] * 10
    assert failing.state().state == "closed"


def test_a_trigger_failing_alone_is_not_systemic(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    one = make_breaker(min_samples=10)
    fail(one, 3)  # only its own failures in the window: no evidence of an outage
    assert one.systemic(own_failures=3) is False


def test_a_trigger_failing_while_the_others_fail_too_is_systemic(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    one, other = make_breaker(min_samples=10), make_breaker(min_samples=10)
    fail(one, 3)
    fail(other, 2)
    assert one.systemic(own_failures=3) is True
    for _ in range(20):  # ...unless most of the others' requests succeed
        other.record(Outcome.OK)
    clock.advance(2.0)
    other.allow("owner-b")
    assert one.systemic(own_failures=3) is False


def test_an_open_breaker_is_systemic(make_breaker: Callable[..., CircuitBreaker]) -> None:
    breaker = make_breaker()
    breaker.record(Outcome.AUTH)
    assert breaker.systemic() is True


def test_an_auth_failure_takes_over_an_outage(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2)
    open_for_outage(breaker)
    assert breaker.record(Outcome.AUTH) == "reopened"
    state = breaker.state()
    assert (state.state, state.reason) == ("open", "auth")
    assert state.probe_in_s is not None
    assert state.probe_in_s > PROBE_S  # the longer auth probe interval now applies


# --- half-open: the probe -------------------------------------------------------------


def test_once_the_probe_is_due_exactly_one_owner_probes(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    # (that nobody probes before the probe time: test_a_storm_of_failures_opens...)
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    other_worker = make_breaker()
    open_for_outage(breaker)
    time.sleep(PAST_TINY_S)
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
    time.sleep(PAST_TINY_S)
    assert breaker.allow("owner-a") == (True, "probe")
    assert breaker.record(Outcome.OK, "owner-a", probe=True) == "closed"
    assert breaker.state() == BreakerState("closed")
    assert fake_redis.exists(KEY) == 0
    assert make_breaker().allow("owner-b") == (True, "closed")
    # the window started afresh: the failures before the outage no longer count
    assert fail(breaker, 1) == [""]
    assert breaker.state().state == "closed"


def test_a_probe_that_fails_reopens_the_breaker_for_another_interval(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    opener = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    prober = make_breaker()  # the probing worker: its probe_s (30 s) sets the next interval
    open_for_outage(opener)
    opened_at = opener.state().opened_at_ms
    time.sleep(PAST_TINY_S)
    assert prober.allow("owner-a") == (True, "probe")
    assert prober.record(Outcome.FAILURE, "owner-a", probe=True) == "reopened"
    state = prober.state()
    assert (state.state, state.reason) == ("open", "outage")
    assert state.probe_in_s is not None
    assert PROBE_S / 2 < state.probe_in_s <= PROBE_S  # a whole interval again
    assert state.opened_at_ms == opened_at  # still the same outage
    assert prober.allow("owner-b") == (False, "outage")
    assert opener.allow("owner-a") == (False, "outage")  # the old probe is no more


def test_after_a_failed_probe_the_next_interval_brings_the_next_probe_for_any_owner(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    open_for_outage(breaker)
    time.sleep(PAST_TINY_S)
    assert breaker.allow("owner-a") == (True, "probe")
    assert breaker.record(Outcome.FAILURE, "owner-a", probe=True) == "reopened"
    time.sleep(PAST_TINY_S)
    assert breaker.allow("owner-b") == (True, "probe")


def test_an_auth_probe_that_is_refused_again_reopens_with_reason_auth(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    opener = make_breaker(auth_probe_s=TINY_PROBE_S)
    prober = make_breaker()  # reopens for its auth_probe_s (120 s): still open below
    assert opener.record(Outcome.AUTH) == "opened"
    time.sleep(PAST_TINY_S)
    assert prober.allow("owner-a") == (True, "probe")
    assert prober.record(Outcome.AUTH, "owner-a", probe=True) == "reopened"
    assert (prober.state().state, prober.state().reason) == ("open", "auth")
    assert prober.allow("owner-a") == (False, "auth")


def test_a_probe_that_never_reports_is_replaced_after_its_timeout(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    # (that others wait while the probe's token is valid: test_once_the_probe_is_due...)
    # the probe's timeout is that of the worker taking the token
    hasty = make_breaker(min_samples=2, probe_s=TINY_PROBE_S, probe_timeout_s=TINY_PROBE_S)
    patient = make_breaker(probe_timeout_s=PROBE_S)
    open_for_outage(hasty)
    time.sleep(PAST_TINY_S)
    assert hasty.allow("owner-a") == (True, "probe")  # then its worker dies
    time.sleep(PAST_TINY_S)
    assert patient.allow("owner-b") == (True, "probe")
    assert patient.allow("owner-a") == (False, "wait")
    assert hasty.allow("owner-a") == (False, "wait")


def test_a_straggler_that_succeeds_does_not_close_an_open_breaker(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker()
    assert breaker.record(Outcome.AUTH) == "opened"
    # a request that passed the gate before the breaker opened, answered later
    assert breaker.record(Outcome.OK, "owner-straggler", probe=True) == ""
    assert (breaker.state().state, breaker.state().reason) == ("open", "auth")


def test_a_success_closes_only_for_the_owner_of_the_probe_token(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    open_for_outage(breaker)
    time.sleep(PAST_TINY_S)
    assert breaker.allow("owner-a") == (True, "probe")
    assert breaker.record(Outcome.OK, "owner-b", probe=True) == ""
    assert breaker.state().state == "half_open"
    assert breaker.record(Outcome.OK, "owner-a", probe=True) == "closed"


def test_a_straggler_that_fails_does_not_postpone_the_probe(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2)
    open_for_outage(breaker)
    before = breaker.state().probe_in_s
    assert before is not None
    assert breaker.record(Outcome.FAILURE, "owner-straggler") == ""
    after = breaker.state().probe_in_s
    assert after is not None
    assert after <= before


# --- state ----------------------------------------------------------------------------


def test_state_reports_open_with_probe_in_s_counting_down(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2)
    open_for_outage(breaker)
    first = breaker.state()
    assert first.state == "open"
    assert first.probe_in_s is not None
    assert PROBE_S / 2 < first.probe_in_s <= PROBE_S
    time.sleep(0.05)  # at least 50 ms pass; probe_in_s has millisecond resolution
    second = breaker.state()
    assert second.state == "open"
    assert second.probe_in_s is not None
    assert second.probe_in_s < first.probe_in_s - 0.04  # counting down


def test_state_reports_half_open_once_due_then_closed(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    open_for_outage(breaker)
    time.sleep(PAST_TINY_S)
    assert (breaker.state().state, breaker.state().probe_in_s) == ("half_open", 0.0)
    assert breaker.state().reason == "outage"
    breaker.allow("owner-a")
    breaker.record(Outcome.OK, "owner-a", probe=True)
    assert breaker.state() == BreakerState("closed")


def test_state_has_no_side_effects(make_breaker: Callable[..., CircuitBreaker]) -> None:
    breaker = make_breaker(min_samples=2, probe_s=TINY_PROBE_S)
    open_for_outage(breaker)
    time.sleep(PAST_TINY_S)
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
