"""The reconciler on fakeredis: what a sweep re-publishes, postpones, forgets or leaves queued."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest

from config.keys import KeySpace, Scope
from tasks.dlq import DeadLetterQueue
from tasks.idempotency import IdempotencyStore, new_owner
from tasks.pending import ENQUEUED_AT_HEADER, PendingLedger
from tasks.reconciler import (
    PUBLISH_WINDOW_S,
    UNKNOWN,
    AmqpBrokerView,
    BrokerView,
    Reconciler,
    RedisBrokerView,
    SweepReport,
)
from worker.reconciliation import ReconcilerThread

T0 = 1_700_000_000.0
T0_MS = int(T0 * 1000)
WINDOW_MS = int(PUBLISH_WINDOW_S * 1000)
GRACE_S = 30.0
INTERVAL_S = 10.0
QUEUE = "clix-triggers"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def ms(self) -> int:
        return int(self.now * 1000)


@dataclass
class FakeBroker:
    """A BrokerView whose answers the test sets, recording what it was asked."""

    oldest: int | None = None
    unacked: set[tuple[str, str]] | None = field(default_factory=set)
    asked: list[str] = field(default_factory=list)

    def oldest_enqueued_ms(self, queue: str) -> int | None:
        self.asked.append(queue)
        return self.oldest

    def unacknowledged(self) -> set[tuple[str, str]] | None:
        return None if self.unacked is None else set(self.unacked)


@dataclass
class RecordingPublish:
    """The reconciler's ``publish``: records (kwargs, enqueued_at_ms), answers ``result``."""

    result: bool = True
    calls: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    side_effect: Callable[[dict[str, Any], int], None] | None = None

    def __call__(self, kwargs: dict[str, Any], enqueued_at_ms: int) -> bool:
        self.calls.append((dict(kwargs), enqueued_at_ms))
        if self.side_effect is not None:
            self.side_effect(kwargs, enqueued_at_ms)
        return self.result


def trigger(campaign: str = "camp-1", key: str = "key-1", **more: Any) -> dict[str, Any]:
    return {"campaign_id": campaign, "idempotency_key": key, **more}


def trigger_of(scope: Scope, **more: Any) -> dict[str, Any]:
    return trigger(scope.campaign_id, scope.idempotency_key, **more)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(fake_redis: fakeredis.FakeRedis, keys: KeySpace, clock: Clock) -> PendingLedger:
    return PendingLedger(fake_redis, keys, ttl_s=3_600, clock=clock)


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def publish() -> RecordingPublish:
    return RecordingPublish()


MakeReconciler = Callable[..., Reconciler]


@pytest.fixture
def make_reconciler(
    store: IdempotencyStore,
    ledger: PendingLedger,
    keys: KeySpace,
    scope: Scope,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
) -> MakeReconciler:
    def build(**overrides: Any) -> Reconciler:
        options: dict[str, Any] = {
            "store": store,
            "pending": ledger,
            "broker": broker,
            "keys": keys,
            "project_id": scope.project_id,
            "queue": QUEUE,
            "publish": publish,
            "owner": "worker-a",
            "grace_s": GRACE_S,
            "interval_s": INTERVAL_S,
            "batch": 500,
            "clock": clock,
        }
        options.update(overrides)
        return Reconciler(**options)

    return build


@pytest.fixture
def reconciler(make_reconciler: MakeReconciler) -> Reconciler:
    return make_reconciler()


def next_interval(fake_redis: fakeredis.FakeRedis, keys: KeySpace) -> None:
    """The sweep lease lapses (the interval passed) so the next sweep runs."""
    fake_redis.delete(keys.reconciler_lease)


def stamp_of(fake_redis: fakeredis.FakeRedis, keys: KeySpace, campaign: str, key: str) -> int:
    score = fake_redis.zscore(keys.bucket(0).pending_index, keys.pending(campaign, key))
    assert score is not None
    return int(score)


def record_stale(ledger: PendingLedger, clock: Clock, *triggers: dict[str, Any]) -> int:
    """Record triggers now, then let more than a grace period pass; return their stamp."""
    stamp = clock.ms()
    ledger.record(list(triggers), stamp)
    clock.advance(GRACE_S + 1)
    return stamp


# --- the grace period ---------------------------------------------------------------------


def test_a_record_younger_than_the_grace_period_is_not_touched(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    ledger.record([trigger()], clock.ms())
    clock.advance(GRACE_S - 1)

    report = reconciler.sweep()

    assert report == SweepReport(swept=True)
    assert publish.calls == []
    assert broker.asked == []  # no candidates: the broker is not even asked
    assert stamp_of(fake_redis, keys, "camp-1", "key-1") == T0_MS
    assert ledger.get(keys.pending("camp-1", "key-1")).enqueued_at_ms == T0_MS  # type: ignore[union-attr]


def test_a_record_exactly_one_grace_period_old_is_judged(
    reconciler: Reconciler, ledger: PendingLedger, clock: Clock, publish: RecordingPublish
) -> None:
    ledger.record([trigger()], clock.ms())
    clock.advance(GRACE_S)

    reconciler.sweep()

    assert len(publish.calls) == 1


# --- lost triggers ------------------------------------------------------------------------


def test_a_lost_trigger_is_republished_once_with_its_kwargs_and_restamped(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    kwargs = trigger(properties={"order_id": "ORD-1", "amount": 12.5}, audience={"ids": ["u1"]})
    record_stale(ledger, clock, kwargs)
    now_ms = clock.ms()

    report = reconciler.sweep()

    assert publish.calls == [(kwargs, now_ms)]
    assert report.swept is True
    assert report.republished == ["camp-1/key-1"]
    assert (report.postponed, report.forgotten, report.waiting_in_queue) == (0, 0, 0)
    record = ledger.get(keys.pending("camp-1", "key-1"))
    assert record is not None
    assert record.kwargs == kwargs
    assert record.enqueued_at_ms == now_ms
    assert stamp_of(fake_redis, keys, "camp-1", "key-1") == now_ms
    assert broker.asked == [QUEUE]


def test_a_second_sweep_right_after_does_not_republish_again(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    record_stale(ledger, clock, trigger())
    reconciler.sweep()
    next_interval(fake_redis, keys)
    clock.advance(INTERVAL_S)

    report = reconciler.sweep()

    assert report == SweepReport(swept=True)
    assert len(publish.calls) == 1


def test_a_republished_trigger_still_lost_a_grace_period_later_is_republished_again(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    record_stale(ledger, clock, trigger())
    reconciler.sweep()
    first = clock.ms()
    next_interval(fake_redis, keys)
    clock.advance(GRACE_S + 1)

    reconciler.sweep()

    assert [stamp for _, stamp in publish.calls] == [first, clock.ms()]


def test_an_index_entry_whose_record_expired_is_forgotten(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    record_stale(ledger, clock, trigger())
    fake_redis.delete(keys.pending("camp-1", "key-1"))

    report = reconciler.sweep()

    assert report.forgotten == 1
    assert publish.calls == []
    assert ledger.depth() == 0


# --- in flight, unacknowledged --------------------------------------------------------------


def test_an_in_flight_trigger_is_postponed_not_published(
    reconciler: Reconciler,
    ledger: PendingLedger,
    store: IdempotencyStore,
    scope: Scope,
    clock: Clock,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    stamp = record_stale(ledger, clock, trigger_of(scope))
    store.claim(scope, new_owner("task-1"))

    report = reconciler.sweep()

    assert publish.calls == []
    assert report.postponed == 1
    assert report.republished == []
    assert stamp_of(fake_redis, keys, scope.campaign_id, scope.idempotency_key) == clock.ms()
    record = ledger.get(keys.pending(scope.campaign_id, scope.idempotency_key))
    assert record is not None
    assert record.enqueued_at_ms == stamp  # only the index entry moves


def test_a_trigger_in_flight_in_another_project_is_not_in_flight_here(
    reconciler: Reconciler,
    ledger: PendingLedger,
    store: IdempotencyStore,
    scope: Scope,
    clock: Clock,
    publish: RecordingPublish,
) -> None:
    record_stale(ledger, clock, trigger_of(scope))
    store.claim(Scope("other-project", scope.campaign_id, scope.idempotency_key), "t|n")

    report = reconciler.sweep()

    assert report.postponed == 0
    assert len(publish.calls) == 1


def test_an_unacknowledged_trigger_is_postponed_not_published(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    stamp = record_stale(ledger, clock, trigger("camp-1", "key-1"), trigger("camp-1", "key-2"))
    broker.unacked = {("camp-1", "key-1"), ("camp-9", "key-2")}

    report = reconciler.sweep()

    assert report.postponed == 1
    assert [kwargs for kwargs, _ in publish.calls] == [trigger("camp-1", "key-2")]
    assert stamp_of(fake_redis, keys, "camp-1", "key-1") == clock.ms()
    assert ledger.get(keys.pending("camp-1", "key-1")).enqueued_at_ms == stamp  # type: ignore[union-attr]


def test_a_postponed_trigger_is_judged_again_one_grace_period_later(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    record_stale(ledger, clock, trigger())
    broker.unacked = {("camp-1", "key-1")}
    reconciler.sweep()
    broker.unacked = set()  # the worker died; the message is gone
    next_interval(fake_redis, keys)
    clock.advance(GRACE_S - 1)
    assert reconciler.sweep() == SweepReport(swept=True)

    next_interval(fake_redis, keys)
    clock.advance(2)
    reconciler.sweep()

    assert len(publish.calls) == 1


# --- done, dead-lettered --------------------------------------------------------------------


def test_a_done_trigger_is_forgotten_never_published(
    reconciler: Reconciler,
    ledger: PendingLedger,
    store: IdempotencyStore,
    scope: Scope,
    clock: Clock,
    publish: RecordingPublish,
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.commit(scope, owner, "trg-1")
    record_stale(ledger, clock, trigger_of(scope))  # a copy enqueued again, then lost

    report = reconciler.sweep()

    assert report.forgotten == 1
    assert publish.calls == []
    assert ledger.depth() == 0


def test_a_trigger_committed_between_range_and_judgement_is_forgotten(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    store: IdempotencyStore,
    scope: Scope,
    clock: Clock,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    record_stale(ledger, clock, trigger_of(scope))

    class CommittingBroker(FakeBroker):
        def unacknowledged(self) -> set[tuple[str, str]]:
            owner = new_owner("task-1")  # a worker finishes the trigger meanwhile
            store.claim(scope, owner)
            store.commit(scope, owner, "trg-1")
            return set()

    report = make_reconciler(broker=CommittingBroker()).sweep()

    assert report.forgotten == 1
    assert publish.calls == []
    assert ledger.depth() == 0


def test_a_dead_lettered_trigger_is_forgotten_never_published(
    reconciler: Reconciler,
    ledger: PendingLedger,
    store: IdempotencyStore,
    dlq: DeadLetterQueue,
    scope: Scope,
    clock: Clock,
    publish: RecordingPublish,
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry = dlq.new_entry(
        reason="rejected", error="400", trigger=trigger_of(scope), project_id=scope.project_id
    )
    dlq.add(entry, scope=scope, owner=owner)
    record_stale(ledger, clock, trigger_of(scope))  # a copy enqueued again, then lost

    report = reconciler.sweep()

    assert publish.calls == []
    assert report.forgotten == 1
    assert ledger.depth() == 0


# --- backlog safety -------------------------------------------------------------------------


def test_a_backlog_of_older_messages_means_nothing_is_republished(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    stamp = record_stale(ledger, clock, *[trigger(key=f"key-{i}") for i in range(50)])
    broker.oldest = stamp - 60_000  # the queue head is older than every record

    report = reconciler.sweep()

    assert publish.calls == []
    assert report.waiting_in_queue == 50
    assert (report.republished, report.postponed, report.forgotten) == ([], 0, 0)
    assert stamp_of(fake_redis, keys, "camp-1", "key-0") == stamp


def test_a_queue_head_enqueued_at_the_same_ms_as_the_record_may_be_it(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
) -> None:
    broker.oldest = record_stale(ledger, clock, trigger())

    report = reconciler.sweep()

    assert publish.calls == []
    assert report.waiting_in_queue == 1


def test_an_unknown_queue_head_means_nothing_is_republished(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
) -> None:
    record_stale(ledger, clock, trigger(key="key-1"), trigger(key="key-2"))
    broker.oldest = UNKNOWN

    report = reconciler.sweep()

    assert publish.calls == []
    assert report.waiting_in_queue == 2


def test_once_the_queue_head_is_younger_than_the_record_it_is_republished(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    stamp = record_stale(ledger, clock, trigger())
    broker.oldest = stamp - 1
    assert reconciler.sweep().waiting_in_queue == 1
    next_interval(fake_redis, keys)

    broker.oldest = stamp + WINDOW_MS + 1  # the backlog drained past it: its message is gone
    report = reconciler.sweep()

    assert report.republished == ["camp-1/key-1"]
    assert len(publish.calls) == 1


def test_a_queue_head_stamped_within_the_publish_window_after_the_record_may_be_behind_it(
    reconciler: Reconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
) -> None:
    # Two producers stamp, then publish in the other order: the later stamp is the head.
    stamp = record_stale(ledger, clock, trigger())
    broker.oldest = stamp + WINDOW_MS

    report = reconciler.sweep()

    assert publish.calls == []
    assert report.waiting_in_queue == 1


# --- the store's clock ----------------------------------------------------------------------


def store_ms(fake_redis: fakeredis.FakeRedis) -> int:
    seconds, micros = fake_redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_without_a_clock_the_cutoff_is_the_stores_time_not_the_hosts(
    make_reconciler: MakeReconciler,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
    publish: RecordingPublish,
) -> None:
    # The test clock of the fixtures stands at T0 (years ago): a reconciler reading
    # any clock but the store's would take both records for lost.
    ledger = PendingLedger(fake_redis, keys, ttl_s=3_600)  # stamps with Redis TIME
    now = store_ms(fake_redis)
    ledger.record([trigger(key="stale")], now - int(GRACE_S * 1000) - 1_000)
    fresh_stamp = ledger.record([trigger(key="fresh")])

    report = make_reconciler(pending=ledger, clock=None).sweep()

    assert [kwargs["idempotency_key"] for kwargs, _ in publish.calls] == ["stale"]
    [(_, restamp)] = publish.calls
    assert now <= restamp <= store_ms(fake_redis)  # the new stamp is the store's time too
    assert report.republished == ["camp-1/stale"]
    assert stamp_of(fake_redis, keys, "camp-1", "fresh") == fresh_stamp


# --- bounded work ---------------------------------------------------------------------------


def test_when_unacknowledged_messages_cannot_be_read_nothing_is_republished(
    reconciler: Reconciler,
    ledger: PendingLedger,
    store: IdempotencyStore,
    scope: Scope,
    clock: Clock,
    broker: FakeBroker,
    publish: RecordingPublish,
) -> None:
    record_stale(ledger, clock, trigger(key="lost"), trigger_of(scope))
    store.claim(scope, new_owner("task-1"))
    broker.unacked = None  # too many to read this sweep

    report = reconciler.sweep()

    assert publish.calls == []
    assert report.unacked_unknown is True
    assert report.waiting_in_queue == 1
    assert report.postponed == 1  # in flight is still known from the ledger


class Ticking:
    """A monotonic clock that moves ``step_s`` each time it is read."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_a_sweep_stops_judging_when_its_time_budget_of_one_interval_is_spent(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
) -> None:
    record_stale(ledger, clock, *[trigger(key=f"key-{i}") for i in range(10)])
    # every read of the clock moves it 0.4 interval: the budget (one interval) fits two
    slow = make_reconciler(monotonic=Ticking(INTERVAL_S * 0.4))

    report = slow.sweep()

    assert report.out_of_time is True
    assert len(publish.calls) == 2
    assert ledger.depth() == 10  # the rest wait for the next sweep, untouched


# --- refused publishes ----------------------------------------------------------------------


def test_a_refused_publish_does_not_restamp(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    refusing = RecordingPublish(result=False)
    stamp = record_stale(ledger, clock, trigger())

    report = make_reconciler(publish=refusing).sweep()

    assert len(refusing.calls) == 1
    assert report.republished == []
    assert stamp_of(fake_redis, keys, "camp-1", "key-1") == stamp
    assert ledger.get(keys.pending("camp-1", "key-1")).enqueued_at_ms == stamp  # type: ignore[union-attr]


def test_a_publish_refused_and_dead_lettered_leaves_nothing_pending(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    dlq: DeadLetterQueue,
    clock: Clock,
) -> None:
    def dead_letter(kwargs: dict[str, Any], _stamp: int) -> None:
        dlq.add(dlq.new_entry(reason="invalid_payload", error="plan changed", trigger=kwargs))

    refusing = RecordingPublish(result=False, side_effect=dead_letter)
    record_stale(ledger, clock, trigger())

    make_reconciler(publish=refusing).sweep()

    assert ledger.depth() == 0
    assert ledger.exists("camp-1", "key-1") is False
    assert dlq.depth() == 1


def test_a_trigger_finished_while_being_republished_is_not_left_pending(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    store: IdempotencyStore,
    scope: Scope,
    clock: Clock,
) -> None:
    def fast_worker(_kwargs: dict[str, Any], _stamp: int) -> None:
        owner = new_owner("task-1")  # an idle worker takes the message at once
        store.claim(scope, owner)
        store.commit(scope, owner, "trg-1")

    record_stale(ledger, clock, trigger_of(scope))

    make_reconciler(publish=RecordingPublish(side_effect=fast_worker)).sweep()

    assert store.status(scope).state == "done"
    assert ledger.exists(scope.campaign_id, scope.idempotency_key) is False
    assert ledger.depth() == 0


# --- one sweeper, the lease -----------------------------------------------------------------


def test_only_one_of_two_reconcilers_sweeps_and_the_lease_lasts_until_the_interval(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    first, second = make_reconciler(owner="worker-a"), make_reconciler(owner="worker-b")
    record_stale(ledger, clock, trigger())

    one = first.sweep()
    other = second.sweep()

    assert one.swept is True
    assert other == SweepReport(swept=False)
    assert len(publish.calls) == 1
    assert fake_redis.get(keys.reconciler_lease) == b"worker-a"
    pttl = fake_redis.pttl(keys.reconciler_lease)
    assert INTERVAL_S * 1000 - 1_000 < pttl <= INTERVAL_S * 1000  # kept, not the 3x bound
    assert first.sweep().swept is False  # not even its holder sweeps before the interval


def test_after_the_interval_the_other_reconciler_may_sweep(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    first, second = make_reconciler(owner="worker-a"), make_reconciler(owner="worker-b")
    first.sweep()
    next_interval(fake_redis, keys)

    assert second.sweep().swept is True
    assert fake_redis.get(keys.reconciler_lease) == b"worker-b"


def test_the_lease_is_taken_for_three_intervals_while_sweeping(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    seen: list[tuple[bytes | None, int]] = []

    def look(_kwargs: dict[str, Any], _stamp: int) -> None:
        lease = keys.reconciler_lease
        seen.append((fake_redis.get(lease), fake_redis.pttl(lease)))

    record_stale(ledger, clock, trigger())
    make_reconciler(publish=RecordingPublish(side_effect=look)).sweep()

    [(holder, pttl)] = seen
    assert holder == b"worker-a"
    assert 2 * INTERVAL_S * 1000 < pttl <= 3 * INTERVAL_S * 1000


def test_a_sweep_never_extends_a_lease_another_worker_took_over(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    def taken_over(_kwargs: dict[str, Any], _stamp: int) -> None:
        # our lease expired mid-sweep and worker-b took it
        fake_redis.set(keys.reconciler_lease, "worker-b", px=90_000)

    record_stale(ledger, clock, trigger())
    make_reconciler(publish=RecordingPublish(side_effect=taken_over)).sweep()

    assert fake_redis.get(keys.reconciler_lease) == b"worker-b"
    assert fake_redis.pttl(keys.reconciler_lease) > INTERVAL_S * 1000


def test_the_lease_is_kept_even_when_the_sweep_fails(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    def broken(_kwargs: dict[str, Any], _stamp: int) -> None:
        raise ConnectionError("broker down")

    record_stale(ledger, clock, trigger())

    with pytest.raises(ConnectionError, match="broker down"):
        make_reconciler(publish=RecordingPublish(side_effect=broken)).sweep()

    assert fake_redis.get(keys.reconciler_lease) == b"worker-a"
    assert 0 < fake_redis.pttl(keys.reconciler_lease) <= INTERVAL_S * 1000


# --- the batch bound ------------------------------------------------------------------------


def test_a_sweep_looks_at_most_at_batch_records_oldest_first(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    for i in range(7):
        ledger.record([trigger(key=f"key-{i}")], T0_MS + i)
    clock.advance(GRACE_S + 1)
    small = make_reconciler(batch=3)

    report = small.sweep()

    assert report.republished == ["camp-1/key-0", "camp-1/key-1", "camp-1/key-2"]
    assert [kwargs["idempotency_key"] for kwargs, _ in publish.calls] == [
        "key-0",
        "key-1",
        "key-2",
    ]
    assert [stamp_of(fake_redis, keys, "camp-1", f"key-{i}") for i in range(3, 7)] == [
        T0_MS + i for i in range(3, 7)
    ]

    next_interval(fake_redis, keys)
    assert len(small.sweep().republished) == 3
    next_interval(fake_redis, keys)
    assert small.sweep().republished == ["camp-1/key-6"]


def test_the_batch_bound_holds_for_postponed_records_too(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    broker: FakeBroker,
) -> None:
    record_stale(ledger, clock, *[trigger(key=f"key-{i}") for i in range(10)])
    broker.unacked = {("camp-1", f"key-{i}") for i in range(10)}

    report = make_reconciler(batch=4).sweep()

    assert report.postponed == 4
    assert len(ledger.older_than(clock.ms() - int(GRACE_S * 1000), 100)) == 6


# --- RedisBrokerView ------------------------------------------------------------------------


def kombu_message(
    kwargs: Any,
    *,
    enqueued_at_ms: Any = None,
    with_header: bool = True,
    task: str = "clix.trigger_campaign",
) -> dict[str, Any]:
    """A Celery (protocol 2) message as kombu's Redis transport stores it."""
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None}])
    headers: dict[str, Any] = {"lang": "py", "task": task, "id": "task-id", "retries": 0}
    if with_header:
        headers[ENQUEUED_AT_HEADER] = enqueued_at_ms
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": "task-id",
            "reply_to": "reply",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "tag",
        },
    }


def unacked_value(message: dict[str, Any]) -> str:
    return json.dumps([message, "", QUEUE])


@pytest.fixture
def broker_redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def test_redis_view_reads_the_oldest_message_at_the_right_end(
    broker_redis: fakeredis.FakeRedis,
) -> None:
    for stamp in (100, 200, 300):  # LPUSH: the oldest ends up at index -1
        broker_redis.lpush(QUEUE, json.dumps(kombu_message(trigger(), enqueued_at_ms=stamp)))

    view = RedisBrokerView(broker_redis)

    assert view.oldest_enqueued_ms(QUEUE) == 100
    broker_redis.rpop(QUEUE)  # a worker BRPOPs the head
    assert view.oldest_enqueued_ms(QUEUE) == 200


def test_redis_view_of_an_empty_queue_is_none(broker_redis: fakeredis.FakeRedis) -> None:
    broker_redis.lpush("other", json.dumps(kombu_message(trigger(), enqueued_at_ms=5)))

    assert RedisBrokerView(broker_redis).oldest_enqueued_ms(QUEUE) is None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(json.dumps(kombu_message(trigger(), with_header=False)), id="no-header"),
        pytest.param(json.dumps(kombu_message(trigger(), enqueued_at_ms="123")), id="text"),
        pytest.param(json.dumps(kombu_message(trigger(), enqueued_at_ms=None)), id="null"),
        pytest.param(json.dumps({**kombu_message(trigger()), "headers": None}), id="no-headers"),
        pytest.param(json.dumps(["not", "a", "message"]), id="a-list"),
        pytest.param("not json at all", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_redis_view_head_without_a_usable_enqueue_time_is_unknown(
    broker_redis: fakeredis.FakeRedis, raw: str | bytes
) -> None:
    broker_redis.lpush(QUEUE, raw)
    broker_redis.lpush(QUEUE, json.dumps(kombu_message(trigger(), enqueued_at_ms=999)))

    assert RedisBrokerView(broker_redis).oldest_enqueued_ms(QUEUE) == UNKNOWN


def test_redis_view_decodes_unacknowledged_triggers(broker_redis: fakeredis.FakeRedis) -> None:
    broker_redis.hset(
        "unacked",
        mapping={
            "tag-1": unacked_value(kombu_message(trigger("camp-1", "key-1"))),
            "tag-2": unacked_value(kombu_message(trigger("camp-2", "key:2", properties={}))),
        },
    )

    assert RedisBrokerView(broker_redis).unacknowledged() == {
        ("camp-1", "key-1"),
        ("camp-2", "key:2"),
    }


def test_redis_view_reads_a_body_that_is_not_base64_encoded(
    broker_redis: fakeredis.FakeRedis,
) -> None:
    message = kombu_message(trigger())
    message["body"] = json.dumps([[], trigger("camp-3", "key-3"), {}])
    message["properties"].pop("body_encoding")
    broker_redis.hset("custom-unacked", "tag", unacked_value(message))

    view = RedisBrokerView(broker_redis, unacked_key="custom-unacked")

    assert view.unacknowledged() == {("camp-3", "key-3")}
    assert RedisBrokerView(broker_redis).unacknowledged() == set()


def test_redis_view_skips_unacknowledged_garbage(broker_redis: fakeredis.FakeRedis) -> None:
    not_base64 = kombu_message(trigger())
    not_base64["body"] = "%%% not base64 %%%"
    no_properties = kombu_message(trigger())
    del no_properties["properties"]
    foreign_task = {
        **kombu_message(trigger()),
        "body": base64.b64encode(json.dumps([[1, 2], {"x": 1}, {}]).encode()).decode(),
    }
    args_only = {**kombu_message(trigger()), "body": base64.b64encode(b"[[1]]").decode()}
    broker_redis.hset(
        "unacked",
        mapping={
            "good": unacked_value(kombu_message(trigger("camp-1", "key-1"))),
            "not-json": "{{{",
            "empty-list": "[]",
            "a-number": "42",
            "a-string-message": json.dumps(["message", "", QUEUE]),
            "no-body": json.dumps([{"headers": {}}, "", QUEUE]),
            "not-base64": unacked_value(not_base64),
            "no-properties": unacked_value(no_properties),
            "foreign-task": unacked_value(foreign_task),
            "args-only": unacked_value(args_only),
            "kwargs-a-list": unacked_value(kombu_message(["camp-1", "key-1"])),
            "no-key": unacked_value(kombu_message({"campaign_id": "camp-2"})),
        },
    )

    assert RedisBrokerView(broker_redis).unacknowledged() == {("camp-1", "key-1")}


def test_redis_view_skips_an_unacknowledged_message_whose_properties_are_not_a_mapping(
    broker_redis: fakeredis.FakeRedis,
) -> None:
    odd = {**kombu_message(trigger("camp-2", "key-2")), "properties": None}
    broker_redis.hset(
        "unacked",
        mapping={
            "good": unacked_value(kombu_message(trigger("camp-1", "key-1"))),
            "odd": unacked_value(odd),
        },
    )

    assert RedisBrokerView(broker_redis).unacknowledged() == {("camp-1", "key-1")}


def test_redis_view_reads_a_large_unacknowledged_hash_in_pages(
    broker_redis: fakeredis.FakeRedis,
) -> None:
    broker_redis.hset(
        "unacked",
        mapping={
            f"tag-{i}": unacked_value(kombu_message(trigger("camp-1", f"key-{i}")))
            for i in range(1_200)
        },
    )

    found = RedisBrokerView(broker_redis, max_unacked=1_200).unacknowledged()

    assert found == {("camp-1", f"key-{i}") for i in range(1_200)}


def test_redis_view_with_more_unacknowledged_messages_than_its_bound_cannot_tell(
    broker_redis: fakeredis.FakeRedis,
) -> None:
    broker_redis.hset(
        "unacked",
        mapping={
            f"tag-{i}": unacked_value(kombu_message(trigger("camp-1", f"key-{i}")))
            for i in range(11)
        },
    )

    assert RedisBrokerView(broker_redis, max_unacked=10).unacknowledged() is None
    assert RedisBrokerView(broker_redis, max_unacked=11).unacknowledged() is not None


def test_redis_view_with_no_unacknowledged_hash_is_empty(
    broker_redis: fakeredis.FakeRedis,
) -> None:
    assert RedisBrokerView(broker_redis).unacknowledged() == set()


def test_a_reconciler_on_a_redis_broker_republishes_nothing_behind_a_backlog(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
    broker_redis: fakeredis.FakeRedis,
) -> None:
    stamp = record_stale(ledger, clock, trigger("camp-1", "key-1"), trigger("camp-1", "key-2"))
    backlog = [
        json.dumps(kombu_message(trigger("camp-0", f"old-{i}"), enqueued_at_ms=stamp - 1_000 + i))
        for i in range(1_000)
    ]
    broker_redis.lpush(QUEUE, *backlog)
    broker_redis.hset("unacked", "tag", unacked_value(kombu_message(trigger("camp-1", "key-1"))))
    view = RedisBrokerView(broker_redis)

    report = make_reconciler(broker=view).sweep()

    assert publish.calls == []
    assert report.postponed == 1  # key-1 is with a worker
    assert report.waiting_in_queue == 1  # key-2 may still be behind the backlog


def test_a_reconciler_on_a_drained_redis_broker_republishes_the_lost_trigger(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
    broker_redis: fakeredis.FakeRedis,
) -> None:
    stamp = record_stale(ledger, clock, trigger())
    newer = kombu_message(trigger("camp-1", "newer"), enqueued_at_ms=stamp + WINDOW_MS + 5)
    broker_redis.lpush(QUEUE, json.dumps(newer))

    report = make_reconciler(broker=RedisBrokerView(broker_redis)).sweep()

    assert report.republished == ["camp-1/key-1"]
    assert publish.calls == [(trigger(), clock.ms())]


# --- AmqpBrokerView ------------------------------------------------------------------------


class FakeCounts:
    """AmqpBrokerView's ``message_count``: answers from a dict, records what it was asked."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.asked: list[str] = []

    def __call__(self, queue: str) -> int:
        self.asked.append(queue)
        return self.counts[queue]


def test_amqp_view_of_an_empty_queue_is_none_and_of_a_busy_one_unknown() -> None:
    counts = FakeCounts({QUEUE: 0, "busy": 3})
    view = AmqpBrokerView(counts)

    assert view.oldest_enqueued_ms(QUEUE) is None
    assert view.oldest_enqueued_ms("busy") == UNKNOWN
    assert counts.asked == [QUEUE, "busy"]
    assert view.unacknowledged() == set()


@pytest.mark.parametrize(("count", "republished"), [(0, 1), (1, 0), (10_000, 0)])
def test_a_reconciler_on_amqp_republishes_only_when_the_queue_is_empty(
    make_reconciler: MakeReconciler,
    ledger: PendingLedger,
    clock: Clock,
    publish: RecordingPublish,
    count: int,
    republished: int,
) -> None:
    record_stale(ledger, clock, trigger())
    view: BrokerView = AmqpBrokerView(FakeCounts({QUEUE: count}))

    report = make_reconciler(broker=view).sweep()

    assert len(publish.calls) == republished
    assert report.waiting_in_queue == 1 - republished


# --- the sweeping thread --------------------------------------------------------------------


class ThreadNoting:
    """Stands in for a Reconciler: notes the thread each sweep runs in."""

    def __init__(self, fail_first: bool = False) -> None:
        self.threads: list[str] = []
        self.swept = threading.Event()
        self.fail_first = fail_first
        self.store = self  # the thread closes ``store.redis`` when it ends
        self.redis = self
        self.closed = False

    def sweep(self) -> SweepReport:
        self.threads.append(threading.current_thread().name)
        if self.fail_first and len(self.threads) == 1:
            raise ConnectionError("store down")
        if len(self.threads) >= 2:
            self.swept.set()
        return SweepReport(swept=True)

    def close(self) -> None:
        self.closed = True


def test_the_reconciler_sweeps_in_its_own_thread_until_stopped() -> None:
    noting = ThreadNoting(fail_first=True)  # a failed sweep does not end the thread
    built_in: list[str] = []
    exited: list[bool] = []

    def build() -> Reconciler:
        built_in.append(threading.current_thread().name)
        return noting  # type: ignore[return-value]

    thread = ReconcilerThread(build, interval_s=0.01, on_exit=lambda: exited.append(True))
    thread.start()
    try:
        assert noting.swept.wait(timeout=30)
    finally:
        thread.stop(timeout_s=30)

    assert not thread.is_alive()
    assert built_in == ["clix-reconciler"]  # its connections are made in the thread
    assert set(noting.threads) == {"clix-reconciler"}
    assert threading.current_thread().name not in noting.threads
    assert noting.closed is True
    assert exited == [True]
