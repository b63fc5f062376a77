"""The schedule and its mover on fakeredis: taking keys, due times, retakes, bounds."""

from __future__ import annotations

import datetime as dt
from typing import Any

import fakeredis
import pytest

from config.keys import KeySpace, Scope
from tasks.errors import InvalidTrigger
from tasks.idempotency import IdempotencyStore, new_owner
from tasks.mover import Mover
from tasks.pending import PendingLedger
from tasks.schedule import ScheduleStore
from tasks.scheduler import when_from

T0_MS = 1_800_000_000_000
TTL_S = 3_600


def trigger(key: str = "key-1", campaign: str = "camp-1") -> dict[str, Any]:
    return {"campaign_id": campaign, "idempotency_key": key, "properties": {"n": 1}}


@pytest.fixture
def schedule(fake_redis: fakeredis.FakeRedis, keys: KeySpace) -> ScheduleStore:
    return ScheduleStore(fake_redis, keys, ttl_s=TTL_S)


class Publisher:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[str, str, int]] = []
        self.fail_after = fail_after

    def __call__(self, kwargs: dict[str, Any], task_id: str, enqueued_at_ms: int) -> bool:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker away")
        self.sent.append((kwargs["idempotency_key"], task_id, enqueued_at_ms))
        return True


def test_scheduling_a_key_twice_keeps_the_first_time_and_task(schedule: ScheduleStore) -> None:
    first = schedule.schedule(trigger(), send_at_ms=T0_MS + 5_000)
    again = schedule.schedule(trigger(), send_at_ms=T0_MS + 9_000, task_id="other")
    assert first.taken
    assert first.send_at_ms == T0_MS + 5_000
    assert again.state == "scheduled_already"
    assert (again.send_at_ms, again.task_id) == (first.send_at_ms, first.task_id)
    assert schedule.depth() == 1


def test_a_queued_or_cancelled_key_is_not_scheduled(
    schedule: ScheduleStore, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    PendingLedger(fake_redis, keys, ttl_s=TTL_S).record([trigger("queued")])
    fake_redis.set(keys.cancelled("camp-1", "gone"), "1")
    assert schedule.schedule(trigger("queued"), delay_ms=1_000).state == "queued"
    assert schedule.schedule(trigger("gone"), delay_ms=1_000).state == "cancelled"
    assert schedule.depth() == 0


def test_a_key_done_in_the_producers_project_is_not_scheduled(
    schedule: ScheduleStore, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("t1")
    store.claim(scope, owner)
    assert (
        schedule.schedule(trigger(), delay_ms=10, project_id=scope.project_id).state == "in_flight"
    )
    store.commit(scope, owner, "trg-1")
    assert schedule.schedule(trigger(), delay_ms=10, project_id=scope.project_id).state == "done"


def test_a_delay_counts_from_the_stores_clock(
    schedule: ScheduleStore, fake_redis: fakeredis.FakeRedis
) -> None:
    seconds, micros = fake_redis.time()
    before = seconds * 1000 + micros // 1000
    scheduled = schedule.schedule(trigger(), delay_ms=90_000)
    assert scheduled.send_at_ms is not None
    assert before + 90_000 <= scheduled.send_at_ms <= before + 95_000


def test_nothing_is_taken_before_its_time(schedule: ScheduleStore) -> None:
    schedule.schedule(trigger(), send_at_ms=T0_MS + 1_000)
    _, due = schedule.take(10, 3_000, now_ms=T0_MS + 999)
    assert due == []
    _, due = schedule.take(10, 3_000, now_ms=T0_MS + 1_000)
    assert [d.kwargs["idempotency_key"] for d in due] == ["key-1"]


def test_a_taken_trigger_is_pending_and_leased_until_the_retake(
    schedule: ScheduleStore, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    scheduled = schedule.schedule(trigger(), send_at_ms=T0_MS)
    _, [due] = schedule.take(10, 3_000, now_ms=T0_MS + 10)
    assert due.task_id == scheduled.task_id
    ledger = PendingLedger(fake_redis, keys, ttl_s=TTL_S)
    assert ledger.exists("camp-1", "key-1")  # the reconciler covers a message lost from here on
    assert schedule.take(10, 3_000, now_ms=T0_MS + 3_009)[1] == []  # another mover: leased
    assert len(schedule.take(10, 3_000, now_ms=T0_MS + 3_010)[1]) == 1  # the first one died


def test_the_mover_publishes_due_triggers_once_with_their_task_ids(
    schedule: ScheduleStore,
) -> None:
    ids = {k: schedule.schedule(trigger(k), send_at_ms=T0_MS + 100).task_id for k in "abc"}
    schedule.schedule(trigger("later"), send_at_ms=T0_MS + 60_000)
    publisher = Publisher()
    mover = Mover(schedule, publisher, batch=2, clock=lambda: T0_MS + 300)
    report = mover.tick()
    assert sorted((key, task) for key, task, _ in publisher.sent) == sorted(ids.items())
    assert report.published == 3
    assert report.late_ms == [200, 200, 200]
    assert mover.tick().published == 0  # finished: not published again
    assert schedule.depth() == 1


def test_one_tick_is_bounded(schedule: ScheduleStore) -> None:
    for number in range(50):
        schedule.schedule(trigger(f"k{number}"), send_at_ms=T0_MS)
    publisher = Publisher()
    mover = Mover(schedule, publisher, batch=10, max_batches=3, clock=lambda: T0_MS)
    assert mover.tick().published == 30
    assert mover.tick().published == 20


def test_a_broker_failure_midway_finishes_what_was_published(schedule: ScheduleStore) -> None:
    for key in "abcd":
        schedule.schedule(trigger(key), send_at_ms=T0_MS)
    now = [T0_MS]
    failing = Publisher(fail_after=2)
    with pytest.raises(ConnectionError):
        Mover(schedule, failing, retake_ms=3_000, clock=lambda: now[0]).tick()
    assert schedule.depth() == 2  # the two unpublished wait for their retake
    now[0] += 3_000
    healthy = Publisher()
    Mover(schedule, healthy, retake_ms=3_000, clock=lambda: now[0]).tick()
    assert sorted(key for key, _, _ in failing.sent + healthy.sent) == ["a", "b", "c", "d"]
    assert schedule.depth() == 0


def test_an_expired_record_leaves_the_schedule(
    schedule: ScheduleStore, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    schedule.schedule(trigger(), send_at_ms=T0_MS)
    fake_redis.delete(keys.scheduled("camp-1", "key-1"))
    assert schedule.take(10, 3_000, now_ms=T0_MS)[1] == []
    assert schedule.depth() == 0


def test_due_times_are_read_one_way_only() -> None:
    at = dt.datetime(2026, 12, 1, 18, 0, tzinfo=dt.UTC)
    assert when_from(send_at=at).send_at_ms == int(at.timestamp() * 1000)  # type: ignore[union-attr]
    assert when_from(countdown=1.5).delay_ms == 1_500  # type: ignore[union-attr]
    assert when_from() is None
    with pytest.raises(InvalidTrigger, match="timezone-aware"):
        when_from(send_at=dt.datetime(2026, 12, 1, 18, 0))
    with pytest.raises(InvalidTrigger, match="not several"):
        when_from(send_at=at, delay_s=3)
    with pytest.raises(InvalidTrigger, match="negative"):
        when_from(delay_s=-1)


def test_the_mover_wakes_at_the_next_due_time_and_polls_when_idle(
    schedule: ScheduleStore,
) -> None:
    mover = Mover(schedule, Publisher(), clock=lambda: T0_MS)
    report = mover.tick()
    assert mover.pause_s(report.now_ms, 0.5) == 0.5  # nothing scheduled: poll
    schedule.schedule(trigger("soon"), send_at_ms=T0_MS + 120)
    report = mover.tick()
    assert mover.pause_s(report.now_ms, 0.5) == pytest.approx(0.12)
    schedule.schedule(trigger("now"), send_at_ms=T0_MS)
    report = mover.tick()  # takes "now"; "soon" is next
    assert report.published == 1
    assert mover.pause_s(report.now_ms, 0.5) == pytest.approx(0.12)
