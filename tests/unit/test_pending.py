"""The pending ledger on fakeredis, and how the ledger and DLQ scripts clear it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from config.keys import KeySpace, Scope
from tasks.dlq import DeadLetterQueue
from tasks.idempotency import ClaimState, IdempotencyStore, new_owner
from tasks.pending import ENQUEUED_AT_HEADER, RECORD_SCRIPT, PendingLedger, PendingTrigger

T0 = 1_700_000_000.0
T0_MS = int(T0 * 1000)
TTL_S = 3_600


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingRedis(fakeredis.FakeRedis):
    """A fakeredis client that records every command it sends (a pipeline counts once)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]).upper())
        return super().execute_command(*args, **options)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.sent.append("PIPELINE")
        return super().pipeline(*args, **kwargs)


def trigger(campaign: str = "camp-1", key: str = "key-1", **more: Any) -> dict[str, Any]:
    return {"campaign_id": campaign, "idempotency_key": key, **more}


def trigger_of(scope: Scope, **more: Any) -> dict[str, Any]:
    return trigger(scope.campaign_id, scope.idempotency_key, **more)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(fake_redis: fakeredis.FakeRedis, keys: KeySpace, clock: Clock) -> PendingLedger:
    return PendingLedger(fake_redis, keys, ttl_s=TTL_S, clock=clock)


def index(fake_redis: fakeredis.FakeRedis, keys: KeySpace) -> list[tuple[str, int]]:
    return [
        (member.decode(), int(score))
        for member, score in fake_redis.zrange(keys.bucket(0).pending_index, 0, -1, withscores=True)
    ]


# --- writing ----------------------------------------------------------------------------


def test_now_ms_is_the_clock_in_whole_milliseconds(ledger: PendingLedger, clock: Clock) -> None:
    clock.now = T0 + 0.123_9
    assert ledger.now_ms() == T0_MS + 123


def test_record_writes_a_record_and_an_index_entry_per_trigger(
    ledger: PendingLedger, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    first = trigger("camp-1", "key-1", properties={"order_id": "ORD-1"})
    second = trigger("camp-2", "key-2")

    ledger.record([first, second], T0_MS)

    key1, key2 = keys.pending("camp-1", "key-1"), keys.pending("camp-2", "key-2")
    assert ledger.get(key1) == PendingTrigger(key1, first, T0_MS)
    assert ledger.get(key2) == PendingTrigger(key2, second, T0_MS)
    assert sorted(index(fake_redis, keys)) == sorted([(key1, T0_MS), (key2, T0_MS)])
    assert ledger.depth() == 2


def test_record_sends_every_trigger_in_one_round_trip(
    fake_server: fakeredis.FakeServer, keys: KeySpace
) -> None:
    counting = CountingRedis(server=fake_server)
    ledger = PendingLedger(counting, keys, ttl_s=TTL_S)
    ledger.record([trigger(key="warm-up")])  # loads the script once per server
    counting.sent.clear()

    ledger.record([trigger(key=f"key-{i}") for i in range(500)])

    assert counting.sent == ["EVALSHA"]
    assert counting.zcard(keys.bucket(0).pending_index) == 501


def test_record_stamps_with_the_stores_clock_and_returns_the_stamp(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger = PendingLedger(fake_redis, keys, ttl_s=TTL_S)  # no clock: Redis TIME
    before_s, before_us = fake_redis.time()

    stamp = ledger.record([trigger(key="key-1"), trigger(key="key-2")])

    after_s, after_us = fake_redis.time()
    assert before_s * 1000 + before_us // 1000 <= stamp <= after_s * 1000 + after_us // 1000
    for key in ("key-1", "key-2"):
        record = ledger.get(keys.pending("camp-1", key))
        assert record is not None
        assert record.enqueued_at_ms == stamp
        assert fake_redis.zscore(keys.bucket(0).pending_index, keys.pending("camp-1", key)) == stamp


def test_now_ms_without_a_clock_is_the_stores_time(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger = PendingLedger(fake_redis, keys, ttl_s=TTL_S)
    before_s, before_us = fake_redis.time()

    now = ledger.now_ms()

    after_s, after_us = fake_redis.time()
    assert before_s * 1000 + before_us // 1000 <= now <= after_s * 1000 + after_us // 1000


def test_record_with_an_explicit_stamp_uses_it(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger = PendingLedger(fake_redis, keys, ttl_s=TTL_S)

    assert ledger.record([trigger()], T0_MS + 7) == T0_MS + 7

    assert ledger.get(keys.pending("camp-1", "key-1")) == PendingTrigger(
        keys.pending("camp-1", "key-1"), trigger(), T0_MS + 7
    )


def test_a_record_keeps_any_json_kwargs_exactly(ledger: PendingLedger, keys: KeySpace) -> None:
    kwargs = trigger(
        properties={"quote": 'say "hi"\\n', "emoji": "caf\u00e9 \u2603", "n": 1.5, "ok": True},
        audience={"targets": [{"project_user_id": "u1"}, {"device_id": "d9"}]},
    )

    ledger.record([kwargs], T0_MS)

    assert ledger.get(keys.pending("camp-1", "key-1")) == PendingTrigger(
        keys.pending("camp-1", "key-1"), kwargs, T0_MS
    )


def test_record_expires_with_exactly_the_configured_ttl(
    ledger: PendingLedger, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger.record([trigger()], T0_MS)

    pttl = fake_redis.pttl(keys.pending("camp-1", "key-1"))
    assert (TTL_S - 1) * 1000 < pttl <= TTL_S * 1000
    assert fake_redis.ttl(keys.pending("camp-1", "key-1")) == TTL_S


def test_record_ttl_follows_a_long_idempotency_ttl(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    week = 7 * 24 * 3600
    PendingLedger(fake_redis, keys, ttl_s=week).record([trigger()], T0_MS)

    assert fake_redis.ttl(keys.pending("camp-1", "key-1")) == week


def test_record_of_no_triggers_sends_and_writes_nothing(
    fake_server: fakeredis.FakeServer, keys: KeySpace
) -> None:
    counting = CountingRedis(server=fake_server)
    ledger = PendingLedger(counting, keys, ttl_s=TTL_S)

    assert ledger.record([]) == 0

    assert counting.sent == []
    assert counting.keys("*") == []


def test_the_same_trigger_enqueued_twice_is_one_record_with_the_latest_stamp(
    ledger: PendingLedger, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger.record([trigger(properties={"n": 1})], T0_MS)
    ledger.record([trigger(properties={"n": 2})], T0_MS + 5_000)

    key = keys.pending("camp-1", "key-1")
    assert ledger.depth() == 1
    assert ledger.get(key) == PendingTrigger(key, trigger(properties={"n": 2}), T0_MS + 5_000)
    assert index(fake_redis, keys) == [(key, T0_MS + 5_000)]


def test_records_are_keyed_by_campaign_and_key_not_by_anything_else(
    ledger: PendingLedger, keys: KeySpace
) -> None:
    ledger.record([trigger("camp-1", "key-1"), trigger("camp-2", "key-1")], T0_MS)
    ledger.record([trigger("camp-1", "key-2")], T0_MS)
    # a ':' inside an id must not make ("a:b", "c") and ("a", "b:c") collide
    ledger.record([trigger("a:b", "c"), trigger("a", "b:c")], T0_MS)

    assert ledger.depth() == 5
    assert keys.pending("a:b", "c") != keys.pending("a", "b:c")
    assert ledger.get(keys.pending("a:b", "c")).kwargs == trigger("a:b", "c")  # type: ignore[union-attr]
    assert ledger.get(keys.pending("a", "b:c")).kwargs == trigger("a", "b:c")  # type: ignore[union-attr]


# --- reading ----------------------------------------------------------------------------


def test_get_of_an_unknown_key_is_none(ledger: PendingLedger, keys: KeySpace) -> None:
    assert ledger.get(keys.pending("camp-1", "missing")) is None


def test_exists_tells_a_pending_trigger_from_an_unknown_one(ledger: PendingLedger) -> None:
    ledger.record([trigger("camp-1", "key-1")], T0_MS)

    assert ledger.exists("camp-1", "key-1") is True
    assert ledger.exists("camp-1", "key-2") is False
    assert ledger.exists("camp-2", "key-1") is False


def test_older_than_lists_oldest_first_up_to_the_cutoff_inclusive(
    ledger: PendingLedger, keys: KeySpace
) -> None:
    for stamp, key in [(400, "d"), (100, "a"), (300, "c"), (200, "b"), (500, "e")]:
        ledger.record([trigger(key=key)], T0_MS + stamp)

    found = ledger.older_than(T0_MS + 400, limit=100)

    assert found == [keys.pending("camp-1", k) for k in ("a", "b", "c", "d")]
    assert all(isinstance(k, str) for k in found)


def test_older_than_is_bounded_by_limit_keeping_the_oldest(
    ledger: PendingLedger, keys: KeySpace
) -> None:
    for stamp in range(10, 0, -1):
        ledger.record([trigger(key=f"k{stamp:02d}")], T0_MS + stamp)

    assert ledger.older_than(T0_MS + 100, limit=3) == [
        keys.pending("camp-1", k) for k in ("k01", "k02", "k03")
    ]


def test_older_than_finds_nothing_younger_than_the_cutoff(ledger: PendingLedger) -> None:
    ledger.record([trigger()], T0_MS)

    assert ledger.older_than(T0_MS - 1, limit=10) == []


# --- restamping, postponing, forgetting ------------------------------------------------------


def test_requeued_restamps_the_record_and_its_index_entry(
    ledger: PendingLedger, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    kwargs = trigger(properties={"order_id": "ORD-1"})
    ledger.record([kwargs], T0_MS)
    key = keys.pending("camp-1", "key-1")
    fake_redis.expire(key, 10)  # most of its lifetime gone
    record = ledger.get(key)
    assert record is not None

    ledger.requeued(record, T0_MS + 60_000)

    assert ledger.get(key) == PendingTrigger(key, kwargs, T0_MS + 60_000)
    assert index(fake_redis, keys) == [(key, T0_MS + 60_000)]
    assert fake_redis.ttl(key) == TTL_S


def test_postpone_moves_the_index_entry_but_keeps_the_enqueue_time(
    ledger: PendingLedger, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger.record([trigger()], T0_MS)
    key = keys.pending("camp-1", "key-1")

    ledger.postpone(key, T0_MS + 45_000)

    assert index(fake_redis, keys) == [(key, T0_MS + 45_000)]
    assert ledger.get(key) == PendingTrigger(key, trigger(), T0_MS)
    assert ledger.older_than(T0_MS + 44_999, limit=10) == []


def test_postpone_never_adds_a_key_missing_from_the_index(
    ledger: PendingLedger, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger.record([trigger()], T0_MS)
    key = keys.pending("camp-1", "key-1")
    ledger.forget(key)  # cleared (done) between the range read and the postpone

    ledger.postpone(key, T0_MS + 45_000)
    ledger.postpone(keys.pending("camp-9", "never"), T0_MS + 45_000)

    assert index(fake_redis, keys) == []
    assert ledger.depth() == 0


def test_forget_drops_the_record_and_its_index_entry_only(
    ledger: PendingLedger, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger.record([trigger(key="key-1"), trigger(key="key-2")], T0_MS)

    ledger.forget(keys.pending("camp-1", "key-1"))

    assert ledger.exists("camp-1", "key-1") is False
    assert ledger.exists("camp-1", "key-2") is True
    assert index(fake_redis, keys) == [(keys.pending("camp-1", "key-2"), T0_MS)]


def test_forget_of_an_index_entry_whose_record_expired(
    ledger: PendingLedger, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger.record([trigger()], T0_MS)
    key = keys.pending("camp-1", "key-1")
    fake_redis.delete(key)  # the record expired; the index entry did not
    assert ledger.depth() == 1

    ledger.forget(key)

    assert ledger.depth() == 0


def test_depth_counts_pending_triggers(ledger: PendingLedger) -> None:
    assert ledger.depth() == 0
    ledger.record([trigger(key=f"key-{i}") for i in range(4)], T0_MS)
    ledger.record([trigger(key="key-0")], T0_MS + 1)  # same trigger again

    assert ledger.depth() == 4


# --- the ledger and DLQ scripts clear it ------------------------------------------------------


def test_commit_clears_the_pending_record_and_index_entry(
    ledger: PendingLedger,
    store: IdempotencyStore,
    scope: Scope,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    ledger.record([trigger_of(scope), trigger_of(scope, idempotency_key="other")], T0_MS)
    owner = new_owner("task-1")
    assert store.claim(scope, owner).state is ClaimState.CLAIMED
    assert ledger.exists(scope.campaign_id, scope.idempotency_key)  # in flight: still pending

    assert store.commit(scope, owner, "trg-1") is True

    assert ledger.exists(scope.campaign_id, scope.idempotency_key) is False
    assert index(fake_redis, keys) == [(keys.pending(scope.campaign_id, "other"), T0_MS)]
    assert store.status(scope).state == "done"


def test_a_commit_refused_to_a_stale_owner_leaves_the_record(
    ledger: PendingLedger, store: IdempotencyStore, scope: Scope
) -> None:
    ledger.record([trigger_of(scope)], T0_MS)
    assert store.claim(scope, new_owner("task-1")).state is ClaimState.CLAIMED

    assert store.commit(scope, new_owner("task-2"), "trg-1") is False

    assert ledger.exists(scope.campaign_id, scope.idempotency_key) is True
    assert ledger.depth() == 1


def test_release_keeps_the_record_pending(
    ledger: PendingLedger, store: IdempotencyStore, scope: Scope
) -> None:
    ledger.record([trigger_of(scope)], T0_MS)
    owner = new_owner("task-1")
    store.claim(scope, owner)

    assert store.release(scope, owner) is True

    assert ledger.exists(scope.campaign_id, scope.idempotency_key) is True
    assert store.status(scope).state == "queued"


def test_a_claim_that_finds_the_scope_done_clears_a_stale_record(
    ledger: PendingLedger, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.commit(scope, owner, "trg-1")
    ledger.record([trigger_of(scope)], T0_MS)  # the producer enqueued it again
    assert ledger.depth() == 1

    claim = store.claim(scope, new_owner("task-2"))

    assert claim.state is ClaimState.DONE
    assert claim.trigger_id == "trg-1"
    assert ledger.exists(scope.campaign_id, scope.idempotency_key) is False
    assert ledger.depth() == 0


def test_a_claim_that_finds_the_scope_dead_clears_a_stale_record(
    ledger: PendingLedger, store: IdempotencyStore, dlq: DeadLetterQueue, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry = dlq.new_entry(
        reason="rejected", error="400", trigger=trigger_of(scope), project_id=scope.project_id
    )
    entry_id = dlq.add(entry, scope=scope, owner=owner)
    ledger.record([trigger_of(scope)], T0_MS)

    claim = store.claim(scope, new_owner("task-2"))

    assert claim.state is ClaimState.DEAD
    assert claim.dead_entry_id == entry_id
    assert ledger.depth() == 0


def test_a_successful_claim_leaves_the_record_pending(
    ledger: PendingLedger, store: IdempotencyStore, scope: Scope
) -> None:
    ledger.record([trigger_of(scope)], T0_MS)

    assert store.claim(scope, new_owner("task-1")).state is ClaimState.CLAIMED

    assert ledger.exists(scope.campaign_id, scope.idempotency_key) is True


def test_scoped_dead_lettering_clears_the_pending_record(
    ledger: PendingLedger,
    store: IdempotencyStore,
    dlq: DeadLetterQueue,
    scope: Scope,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
) -> None:
    ledger.record([trigger_of(scope), trigger_of(scope, idempotency_key="other")], T0_MS)
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry = dlq.new_entry(
        reason="retries_exhausted",
        error="503",
        trigger=trigger_of(scope),
        project_id=scope.project_id,
    )

    dlq.add(entry, scope=scope, owner=owner)

    assert ledger.exists(scope.campaign_id, scope.idempotency_key) is False
    assert index(fake_redis, keys) == [(keys.pending(scope.campaign_id, "other"), T0_MS)]
    assert dlq.depth() == 1


def test_unscoped_dead_lettering_with_campaign_and_key_clears_the_pending_record(
    ledger: PendingLedger, dlq: DeadLetterQueue, fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    ledger.record([trigger("camp-1", "key-1"), trigger("camp-1", "key-2")], T0_MS)
    entry = dlq.new_entry(
        reason="invalid_payload", error="plan changed", trigger=trigger("camp-1", "key-1")
    )

    dlq.add(entry)

    assert ledger.exists("camp-1", "key-1") is False
    assert index(fake_redis, keys) == [(keys.pending("camp-1", "key-2"), T0_MS)]
    assert dlq.depth() == 1


def test_unscoped_dead_lettering_without_campaign_and_key_touches_no_record(
    ledger: PendingLedger, dlq: DeadLetterQueue
) -> None:
    ledger.record([trigger("camp-1", "key-1")], T0_MS)
    entry = dlq.new_entry(
        reason="invalid_payload", error="not JSON", trigger=None, raw="\x00garbage"
    )

    dlq.add(entry)

    assert ledger.exists("camp-1", "key-1") is True
    assert ledger.depth() == 1
    assert dlq.depth() == 1


# --- status --------------------------------------------------------------------------------


def test_status_says_queued_for_a_pending_trigger_with_no_lease(
    ledger: PendingLedger, store: IdempotencyStore, scope: Scope
) -> None:
    assert store.status(scope).state == "unknown"

    ledger.record([trigger_of(scope)], T0_MS)

    assert store.status(scope).state == "queued"


def test_status_says_in_flight_over_queued_while_a_lease_is_held(
    ledger: PendingLedger, store: IdempotencyStore, scope: Scope
) -> None:
    ledger.record([trigger_of(scope)], T0_MS)
    store.claim(scope, new_owner("task-1"))

    assert store.status(scope).state == "in_flight"


# --- the reference for producers in other languages ------------------------------------------


def _reference_producer() -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / "foreign-producer" / "publish.py"
    spec = importlib.util.spec_from_file_location("foreign_producer", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_producer_runs_the_same_record_script() -> None:
    assert _reference_producer().RECORD_SCRIPT == RECORD_SCRIPT


def test_the_reference_producer_writes_a_record_the_ledger_reads(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    reference = _reference_producer()
    kwargs = trigger("camp:1/x", "key 1", properties={"order_id": "ORD-1"})

    stamp = reference.record_pending(fake_redis, keys.prefix, TTL_S, kwargs)

    key = keys.pending("camp:1/x", "key 1")
    assert reference.pending_key(keys.prefix, "camp:1/x", "key 1") == key
    assert PendingLedger(fake_redis, keys, ttl_s=TTL_S).get(key) == PendingTrigger(
        key, kwargs, stamp
    )
    assert fake_redis.zscore(keys.bucket(0).pending_index, key) == stamp
    assert fake_redis.ttl(key) == TTL_S
    message = reference.celery_message("clix.triggers", kwargs, stamp)
    assert message["headers"][ENQUEUED_AT_HEADER] == stamp
