"""Filtering and counting DLQ entries: the index narrows by time, entries by reason/campaign."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from config.keys import KeySpace, Scope
from tasks.dlq import DeadLetterQueue
from tasks.dlq_selection import Selection

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def filled(fake_redis: fakeredis.FakeRedis, keys: KeySpace, clock: Clock) -> DeadLetterQueue:
    """Six entries one minute apart: (campaign, reason) pairs below, oldest first."""
    queue = DeadLetterQueue(fake_redis, keys, ttl_s=3_600, clock=clock)
    rows = [
        ("c1", "rejected"),
        ("c1", "retries_exhausted"),
        ("c2", "retries_exhausted"),
        ("c2", "rejected"),
        ("c1", "retries_exhausted"),
        (None, "invalid_payload"),
    ]
    for n, (campaign, reason) in enumerate(rows):
        clock.now = T0 + 60 * n
        trigger: dict[str, Any] | None = (
            {"campaign_id": campaign, "idempotency_key": f"k{n}"} if campaign else None
        )
        queue.add(
            queue.new_entry(
                reason=reason,
                error="e",
                trigger=trigger,
                project_id="p",
                raw=None if trigger else f"garbage {n}",
            ),
            scope=Scope("p", campaign, f"k{n}") if campaign else None,
        )
    return queue


def keys_of(entries: list[dict[str, Any]]) -> list[str | None]:
    return [e["idempotency_key"] for e in entries]


def ms(offset_s: float) -> int:
    return int((T0 + offset_s) * 1000)


def test_an_empty_selection_selects_every_entry_oldest_first(filled: DeadLetterQueue) -> None:
    assert keys_of(filled.entries(Selection())) == ["k0", "k1", "k2", "k3", "k4", None]
    assert Selection().is_empty


def test_reason_filter_keeps_only_that_reason(filled: DeadLetterQueue) -> None:
    chosen = filled.entries(Selection(reasons=frozenset({"retries_exhausted"})))
    assert keys_of(chosen) == ["k1", "k2", "k4"]


def test_campaign_and_reason_filters_combine(filled: DeadLetterQueue) -> None:
    chosen = Selection(reasons=frozenset({"retries_exhausted"}), campaign_ids=frozenset({"c1"}))
    assert keys_of(filled.entries(chosen)) == ["k1", "k4"]
    assert filled.ids(chosen) == [e["id"] for e in filled.entries(chosen)]


def test_since_and_until_are_inclusive_bounds_on_failure_time(filled: DeadLetterQueue) -> None:
    window = Selection(since_ms=ms(60), until_ms=ms(180))
    assert keys_of(filled.entries(window)) == ["k1", "k2", "k3"]
    assert keys_of(filled.entries(Selection(since_ms=ms(240)))) == ["k4", None]
    assert keys_of(filled.entries(Selection(until_ms=ms(59)))) == ["k0"]
    assert filled.ids(Selection(since_ms=ms(1_000))) == []


def test_a_limit_counts_matching_entries_not_entries_read(filled: DeadLetterQueue) -> None:
    chosen = Selection(reasons=frozenset({"retries_exhausted"}))
    assert keys_of(filled.entries(chosen, limit=2)) == ["k1", "k2"]
    assert len(filled.ids(Selection(), limit=4)) == 4


def test_filters_read_the_entries_page_by_page(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace, clock: Clock
) -> None:
    queue = DeadLetterQueue(fake_redis, keys, ttl_s=60, clock=clock)
    for n in range(1_203):  # more than two pages
        clock.now = T0 + n
        reason = "rejected" if n % 3 else "retries_exhausted"
        queue.add(
            queue.new_entry(
                reason=reason, error="e", trigger={"campaign_id": "c", "idempotency_key": str(n)}
            )
        )
    chosen = queue.ids(Selection(reasons=frozenset({"retries_exhausted"})))
    assert len(chosen) == 401
    assert chosen == sorted(chosen)


def test_stats_count_by_reason_and_campaign(filled: DeadLetterQueue) -> None:
    stats = filled.stats().to_json()
    assert stats["total"] == 6
    assert stats["by_reason"] == {"invalid_payload": 1, "rejected": 2, "retries_exhausted": 3}
    assert stats["by_campaign"] == [
        {"campaign_id": "c1", "count": 3},
        {"campaign_id": "c2", "count": 2},
        {"campaign_id": None, "count": 1},
    ]
    assert stats["oldest_failed_at"] < stats["newest_failed_at"]


def test_stats_of_a_selection_count_only_it(filled: DeadLetterQueue) -> None:
    stats = filled.stats(Selection(campaign_ids=frozenset({"c2"}))).to_json()
    assert stats["total"] == 2
    assert stats["by_reason"] == {"rejected": 1, "retries_exhausted": 1}


def test_stats_of_an_empty_dlq_are_zero(dlq: DeadLetterQueue) -> None:
    assert dlq.stats().to_json() == {
        "total": 0,
        "by_reason": {},
        "by_campaign": [],
        "oldest_failed_at": None,
        "newest_failed_at": None,
    }
