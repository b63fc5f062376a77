"""The store's clock read once per resync period and carried forward on the monotonic clock."""

from __future__ import annotations

from typing import Any

import fakeredis

from tasks.store_clock import StoreClock


class CountingRedis:
    """A store whose ``TIME`` is set by the test and counted."""

    def __init__(self, store_ms: int) -> None:
        self.store_ms = store_ms
        self.reads = 0

    def time(self) -> tuple[int, int]:
        self.reads += 1
        return self.store_ms // 1000, (self.store_ms % 1000) * 1000


class Monotonic:
    def __init__(self) -> None:
        self.now_s = 500.0

    def __call__(self) -> float:
        return self.now_s


def _clock(store: Any, monotonic: Monotonic, resync_s: float = 10.0) -> StoreClock:
    return StoreClock(store, resync_s=resync_s, monotonic=monotonic)


def test_the_first_reading_is_the_stores_time() -> None:
    store = CountingRedis(1_800_000_000_123)
    assert _clock(store, Monotonic()).now_ms() == 1_800_000_000_123
    assert store.reads == 1


def test_readings_within_the_resync_period_add_monotonic_time_without_a_round_trip() -> None:
    store, monotonic = CountingRedis(1_800_000_000_000), Monotonic()
    clock = _clock(store, monotonic)
    clock.now_ms()
    monotonic.now_s += 2.5
    store.store_ms += 60_000  # what the store says now is not asked
    assert clock.now_ms() == 1_800_000_002_500
    assert store.reads == 1


def test_the_store_is_asked_again_once_the_resync_period_is_over() -> None:
    store, monotonic = CountingRedis(1_800_000_000_000), Monotonic()
    clock = _clock(store, monotonic)
    clock.now_ms()
    monotonic.now_s += 10.0
    store.store_ms = 1_800_000_010_400  # the two clocks drifted 400 ms apart
    assert clock.now_ms() == 1_800_000_010_400
    assert store.reads == 2


def test_a_real_stores_time_reply_is_read_in_milliseconds() -> None:
    # (a producer whose wall clock is a minute off: tests/integration/test_lose_nothing.py)
    conn = fakeredis.FakeRedis()
    seconds, micros = conn.time()
    stamp = StoreClock(conn).now_ms()
    assert abs(stamp - (int(seconds) * 1000 + int(micros) // 1000)) < 1_000
