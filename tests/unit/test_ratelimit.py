"""The fleet-wide GCRA limiter on fakeredis: reservations, holds, bounded waits, threads.

In production Redis ``TIME`` is the limiter's clock; here most tests pass a
:class:`Clock` that stands still until a test advances it, so every wait is
exact whatever the machine's load. ``sleep`` only records (or advances the
clock). The rate is 64/s so that an interval (1/64 s = 15,625 us) and every
clock reading are exact binary fractions: waits are compared with ``==``.
Two tests keep Redis ``TIME`` (``clock=None``, as in production), one of them
with real threads, with bounds that load can only make easier to meet.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import fakeredis
import pytest

from tasks.errors import RateLimitWaitTooLong
from tasks.ratelimit import RateLimiter

KEY = "clix:ratelimit:proj-unit"
RATE = 64.0  # one slot every 15.625 ms
INTERVAL = 1 / RATE  # 0.015625: exact in binary, so n * INTERVAL is exact too


class Clock:
    """A clock that stands still until advanced (seconds, like ``time.time``).

    Advance it by binary fractions (multiples of :data:`INTERVAL`, 0.125...) and
    its reading in microseconds stays an exact integer.
    """

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Waits:
    """A ``sleep`` that records and returns at once (time does not pass)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if len(self.calls) > 1000:
            raise AssertionError("the limiter slept more than 1000 times")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_limiter(fake_redis: fakeredis.FakeRedis, clock: Clock) -> Callable[..., RateLimiter]:
    def build(**options: object) -> RateLimiter:
        values: dict[str, object] = {
            "rate_per_s": RATE,
            "burst": 5,
            "sleep": Waits(),
            "clock": clock,
        }
        values.update(options)
        return RateLimiter(fake_redis, KEY, **values)  # type: ignore[arg-type]

    return build


# --- reservations ---------------------------------------------------------------------


def test_the_first_burst_acquisitions_do_not_wait(make_limiter: Callable[..., RateLimiter]) -> None:
    waits = Waits()
    limiter = make_limiter(burst=5, sleep=waits)
    assert [limiter.acquire() for _ in range(5)] == [0.0] * 5
    assert waits.calls == []  # no sleep at all, not even sleep(0)


def test_after_the_burst_each_wait_grows_by_one_interval(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    waits = Waits()
    limiter = make_limiter(burst=5, sleep=waits)
    for _ in range(5):
        limiter.acquire()
    returned = [limiter.acquire() for _ in range(4)]
    # nobody really slept, so each further slot is one more interval away
    assert waits.calls == returned
    # the sixth acquisition waits exactly one interval, the seventh two...
    assert returned == [INTERVAL, 2 * INTERVAL, 3 * INTERVAL, 4 * INTERVAL]
    steps = [b - a for a, b in itertools.pairwise(returned)]
    assert steps == [INTERVAL] * 3


def test_after_idle_time_the_burst_is_available_again(
    make_limiter: Callable[..., RateLimiter], clock: Clock
) -> None:
    waits = Waits()
    limiter = make_limiter(burst=5, sleep=waits)
    for _ in range(8):  # the burst and three slots beyond it
        limiter.acquire()
    clock.advance(8 * INTERVAL)  # quiet long enough for every reservation to pass
    waits.calls.clear()
    assert [limiter.acquire() for _ in range(5)] == [0.0] * 5
    assert limiter.acquire() == INTERVAL  # not a bigger burst
    assert len(waits.calls) == 1


def test_a_reservation_is_kept_even_if_its_caller_never_sends(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    first = make_limiter(burst=1)
    second = make_limiter(burst=1)  # another worker on the same key
    assert first.acquire() == 0.0
    assert second.acquire() == INTERVAL


def test_limiters_of_different_projects_do_not_share_slots(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    one = RateLimiter(fake_redis, KEY + "-a", rate_per_s=RATE, burst=1, sleep=Waits())
    two = RateLimiter(fake_redis, KEY + "-b", rate_per_s=RATE, burst=1, sleep=Waits())
    assert (one.acquire(), two.acquire()) == (0.0, 0.0)


def test_without_a_clock_the_limiter_spaces_slots_on_redis_time(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # production's path (clock=None). Real time passes between the calls, so the
    # waits are not exact: the bounds leave seconds for a loaded machine
    waits = Waits()
    limiter = RateLimiter(
        fake_redis, KEY, rate_per_s=0.1, burst=1, max_wait_s=60.0, sleep=waits
    )  # slots 10 s apart, all within reach
    assert limiter.acquire() == 0.0
    second = limiter.acquire()
    assert 5.0 < second <= 10.0
    assert waits.calls == [second]
    # the TAT is on Redis TIME's scale (the wall clock here): two slots after now
    tat_s = int(fake_redis.get(KEY)) / 1_000_000
    assert time.time() < tat_s <= time.time() + 20.0
    assert limiter.hold(30.0) is True
    assert 25.0 < limiter.acquire() <= 30.0


# --- hold -----------------------------------------------------------------------------


def test_hold_makes_the_next_acquisition_wait_exactly_that_long(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    waits = Waits()
    limiter = make_limiter(burst=5, sleep=waits)
    assert limiter.hold(1.5) is True
    assert limiter.acquire() == 1.5
    assert waits.calls == [1.5]
    # no burst right after a hold: the next slot follows one interval later
    assert limiter.acquire() == 1.5 + INTERVAL


def test_hold_is_seen_by_every_limiter_on_the_key(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    make_limiter().hold(0.75)
    assert make_limiter().acquire() == 0.75


def test_a_shorter_hold_does_not_shorten_a_longer_one(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    limiter = make_limiter()
    assert limiter.hold(2.0) is True
    assert limiter.hold(0.5) is False
    assert limiter.acquire() == 2.0


def test_a_hold_that_is_over_costs_nothing(
    make_limiter: Callable[..., RateLimiter], clock: Clock
) -> None:
    limiter = make_limiter(burst=1)
    limiter.hold(0.25)
    clock.advance(0.25)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == INTERVAL  # and the hold left no extra burst behind


# --- bounded waits --------------------------------------------------------------------


def test_a_slot_beyond_max_wait_is_not_reserved_and_the_limiter_gives_up(
    make_limiter: Callable[..., RateLimiter], fake_redis: fakeredis.FakeRedis
) -> None:
    waits = Waits()
    woke: list[int] = []
    limiter = make_limiter(max_wait_s=0.5, give_up_s=2.0, sleep=waits)
    limiter.hold(3_600)  # far in the future: no recorded wait brings it closer
    tat_before = fake_redis.get(KEY)
    with pytest.raises(RateLimitWaitTooLong, match=r"no request slot within 2 s"):
        limiter.acquire(on_wait=lambda: woke.append(len(waits.calls)))
    # it slept the bound, was told each time, asked again; never beyond give_up_s
    assert waits.calls == [0.5, 0.5, 0.5, 0.5]
    assert woke == [1, 2, 3, 4]
    assert fake_redis.get(KEY) == tat_before  # nothing was reserved


def test_an_error_raised_by_on_wait_stops_the_wait(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    waits = Waits()
    limiter = make_limiter(max_wait_s=0.5, sleep=waits)
    limiter.hold(3_600)

    def lease_lost() -> None:
        raise RuntimeError("claim lost")

    with pytest.raises(RuntimeError, match="claim lost"):
        limiter.acquire(on_wait=lease_lost)
    assert waits.calls == [0.5]


def test_a_far_slot_is_taken_once_it_comes_within_max_wait(
    make_limiter: Callable[..., RateLimiter], clock: Clock
) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    woke: list[bool] = []
    limiter = make_limiter(max_wait_s=0.125, sleep=sleep)
    limiter.hold(0.3125)
    started = clock()
    waited = limiter.acquire(on_wait=lambda: woke.append(True))
    assert slept == [0.125, 0.125, 0.0625]  # the bound twice, then in reach
    assert len(woke) == 2
    assert waited == 0.3125
    assert clock() - started == 0.3125


# --- concurrency ----------------------------------------------------------------------


def test_threads_of_many_workers_never_share_a_slot(fake_server: fakeredis.FakeServer) -> None:
    rate, threads, each = 200.0, 8, 25
    interval = 1 / rate
    sent_at: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker() -> None:
        conn = fakeredis.FakeRedis(server=fake_server)  # each worker its own connection
        limiter = RateLimiter(conn, KEY, rate_per_s=rate, burst=1)  # real sleep
        start.wait()
        for _ in range(each):
            limiter.acquire()
            with lock:
                sent_at.append(time.monotonic())

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.monotonic()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)  # about 1 s unloaded; generous for a loaded machine
    elapsed = time.monotonic() - t0
    assert len(sent_at) == threads * each
    total = threads * each
    # lower bounds only: load can make sends later, never earlier.
    # 200 distinct slots at 200/s with no burst take at least 199 intervals
    assert elapsed >= (total - 1) * interval - 0.001
    # the k-th send can come no earlier than the k-th slot: no two threads got the same
    for k, at in enumerate(sorted(sent_at)):
        assert at - t0 >= k * interval - 0.001, (k, at - t0)
    conn = fakeredis.FakeRedis(server=fake_server)
    # the TAT always carries an expiry (-1 would be none; -2: it already ran out,
    # which a long stall of this thread after the last send may allow)
    assert conn.pttl(KEY) != -1


# --- clock edge cases and expiry ------------------------------------------------------


def test_a_tat_in_the_past_counts_as_now(
    make_limiter: Callable[..., RateLimiter], fake_redis: fakeredis.FakeRedis, clock: Clock
) -> None:
    fake_redis.set(KEY, "1")  # an ancient TAT left by a long idle spell
    limiter = make_limiter(burst=3)
    waits = [limiter.acquire() for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]  # never a negative wait
    assert waits[3] == INTERVAL  # and no burst beyond 3
    # the TAT restarted from now: four slots, three of them the burst
    assert int(fake_redis.get(KEY)) == int(clock() * 1_000_000) + 4 * 15_625


def test_the_tat_key_expires_shortly_after_its_last_reservation(
    make_limiter: Callable[..., RateLimiter], fake_redis: fakeredis.FakeRedis
) -> None:
    limiter = make_limiter(rate_per_s=1 / 64, burst=1)  # one slot every 64 s
    limiter.acquire()
    # the TAT is one interval ahead; the key lives that long plus one second.
    # fakeredis expires keys in real time: the upper bound is exact, and the
    # lower one leaves seconds of slack for a loaded machine
    assert 60_000 < fake_redis.pttl(KEY) <= 64_000 + 1_000
    limiter.hold(3_600)
    assert 3_500_000 < fake_redis.pttl(KEY) <= 3_600_000 + 1_000


def test_a_limiter_whose_key_expired_starts_afresh_with_its_burst(
    make_limiter: Callable[..., RateLimiter], fake_redis: fakeredis.FakeRedis
) -> None:
    limiter = make_limiter(burst=2)
    for _ in range(4):
        limiter.acquire()
    fake_redis.delete(KEY)  # what its PX does once the project has been idle
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, INTERVAL]


# --- construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0, 1), (-5, 1), (10, 0), (10, -1)],
    ids=["rate0", "rate<0", "burst0", "burst<0"],
)
def test_invalid_rate_or_burst_is_refused(
    fake_redis: fakeredis.FakeRedis, rate: float, burst: int
) -> None:
    with pytest.raises(ValueError, match="rate_per_s must be > 0 and burst >= 1"):
        RateLimiter(fake_redis, KEY, rate_per_s=rate, burst=burst)


def test_burst_of_one_means_no_two_requests_in_the_same_interval(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    limiter = make_limiter(burst=1)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == INTERVAL
