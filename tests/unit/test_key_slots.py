"""The key layout on a Redis Cluster: every script's KEYS in one slot, readers over all buckets.

A fakeredis client that refuses, like a cluster node, a script whose KEYS span
more than one slot (CROSSSLOT) runs every script of the store through the
real classes with the cluster layout (``CLIX_KEY_SLOTS=16``). The slots are
redis-py's ``key_slot``, the function the cluster client routes by.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from config.celery_app import celery_config
from config.connections import cluster_nodes
from config.keys import KeySpace, Scope, bucket_tags
from config.settings import Settings
from tasks.breaker import CircuitBreaker, Outcome
from tasks.cancel import Canceller
from tasks.dlq import DeadLetterQueue
from tasks.history import Attempt, AttemptHistory
from tasks.idempotency import ClaimState, IdempotencyStore, new_owner
from tasks.pending import PendingLedger
from tasks.ratelimit import RateLimiter
from tasks.schedule import ScheduleStore

CLUSTER_URL = "redis+cluster://10.0.0.1:7000,10.0.0.2:7001/0"
SLOTS = 16


class SlotCheckingRedis(fakeredis.FakeRedis):
    """A fakeredis that refuses a script whose keys are in more than one slot (as a cluster)."""

    scripts_run: list[tuple[str, ...]]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        keys = tuple(str(k) for k in keys_and_args[:numkeys])
        slots = {key_slot(k.encode()) for k in keys}
        if len(slots) > 1:
            raise AssertionError(f"CROSSSLOT: {keys} span slots {sorted(slots)}")
        self.scripts_run.append(keys)
        return super().evalsha(sha, numkeys, *keys_and_args)


@pytest.fixture
def conn() -> SlotCheckingRedis:
    client = SlotCheckingRedis(server=fakeredis.FakeServer())
    client.scripts_run = []
    return client


@pytest.fixture
def layout() -> KeySpace:
    return KeySpace("clix", SLOTS)


def _scopes(count: int) -> list[Scope]:
    return [Scope("proj", f"camp-{n % 3}", f"key:{n}/x") for n in range(count)]


def test_every_ledger_and_dlq_script_keeps_its_keys_in_one_slot(
    conn: SlotCheckingRedis, layout: KeySpace
) -> None:
    store = IdempotencyStore(conn, layout, lease_ms=5_000, ttl_s=3_600)
    dlq = DeadLetterQueue(conn, layout, ttl_s=3_600)
    history = AttemptHistory(conn, layout, cap=5, ttl_s=3_600)
    limiter = RateLimiter(conn, layout.ratelimit("proj"), rate_per_s=100, burst=10)
    for n, scope in enumerate(_scopes(12)):
        owner = new_owner(f"task-{n}")
        claim = store.claim(scope, owner, slot=limiter.slot_request())
        assert claim.state is ClaimState.CLAIMED
        assert claim.slot_wait_us is None  # the limiter is in another slot: reserved apart
        assert store.renew(scope, owner, 2) == 2
        store.not_sent(scope, owner)
        history.record(scope, Attempt(2, 0, "503", 10, "w"))
        assert store.extend(scope, owner)
        if n % 3 == 0:
            assert store.commit(scope, owner, f"trg-{n}", attempt="3,0,200,9,w", history_cap=5)
        elif n % 3 == 1:
            entry = dlq.new_entry(
                reason="rejected", error="400", trigger=_kwargs(scope), project_id="proj"
            )
            dlq.add(entry, scope=scope, owner=owner)
            assert dlq.replay(entry["id"], lambda _t: "task-again").outcome == "replayed"
        else:
            assert store.release(scope, owner, uncount=True, unsent=True)
    unscoped = dlq.new_entry(reason="invalid_payload", error="bad", trigger=None, raw="{")
    assert dlq.add(unscoped) == unscoped["id"]
    assert dlq.purge([unscoped["id"]]) == [unscoped["id"]]
    assert len(conn.scripts_run) > 60


def test_schedule_cancel_pending_and_fleet_scripts_keep_their_keys_in_one_slot(
    conn: SlotCheckingRedis, layout: KeySpace
) -> None:
    pending = PendingLedger(conn, layout, ttl_s=3_600)
    schedule = ScheduleStore(conn, layout, ttl_s=3_600)
    canceller = Canceller(conn, layout, ttl_s=3_600)
    scopes = _scopes(20)
    pending.record([_kwargs(s) for s in scopes[:10]])  # one script per bucket
    for scope in scopes[10:]:
        assert schedule.schedule(_kwargs(scope), send_at_ms=1_000, project_id="proj").taken
    _, due = schedule.take(limit=100, retake_ms=3_000)
    assert len(due) == 10
    schedule.finish([d.key for d in due])
    assert canceller.cancel(scopes[0].campaign_id, scopes[0].idempotency_key, ["proj"]).cancelled
    AttemptHistory(conn, layout, cap=5, ttl_s=60).register()
    breaker = CircuitBreaker(conn, layout.breaker("proj"), window_key=layout.breaker_window("proj"))
    breaker.record(Outcome.FAILURE, "owner")
    assert breaker.allow("owner")[0]
    RateLimiter(conn, layout.ratelimit("proj"), rate_per_s=100, burst=10).hold(0.01)


def test_the_cluster_layout_spreads_buckets_evenly_over_the_slot_range() -> None:
    for count in (2, 16, 100):
        slots = [key_slot(f"x{{{tag}}}y".encode()) for tag in bucket_tags(count)]
        ranges = [slot * count // REDIS_CLUSTER_HASH_SLOTS for slot in slots]
        assert ranges == list(range(count))


def test_a_trigger_lives_in_its_bucket_whatever_its_project(layout: KeySpace) -> None:
    ours, theirs = Scope("a", "camp", "k"), Scope("b", "camp", "k")
    slots = {key_slot(k.encode()) for k in layout.scope_keys(ours) + layout.scope_keys(theirs)}
    assert len(slots) == 1
    spread = {layout.bucket_for("camp", f"k{n}").number for n in range(200)}
    assert spread == set(range(SLOTS))


def test_one_bucket_keeps_the_key_names_of_earlier_releases() -> None:
    keys, scope = KeySpace("clix"), Scope("p", "c", "k")
    assert keys.scope_keys(scope) + keys.hold_keys(scope) == [
        "clix:lease:p:c:k",
        "clix:done:p:c:k",
        "clix:dead:p:c:k",
        "clix:meta:p:c:k",
        "clix:pending:c:k",
        "clix:pending-index",
        "clix:scheduled:c:k",
        "clix:cancelled:c:k",
    ]
    bucket = keys.bucket(0)
    assert [bucket.schedule, bucket.dlq_entries, bucket.dlq_index, bucket.dlq_unscoped] == [
        "clix:schedule",
        "clix:dlq:entries",
        "clix:dlq:index",
        "clix:dlq:unscoped",
    ]
    assert [keys.ratelimit("p"), keys.breaker_window("p"), keys.stats, keys.workers] == [
        "clix:ratelimit:p",
        "clix:breaker:p:window",
        "clix:stats",
        "clix:workers",
    ]
    assert keys.claim_reserves_slot


@pytest.mark.parametrize("slots", [1, SLOTS])
def test_a_scopes_keys_built_at_once_match_the_keys_built_one_by_one(slots: int) -> None:
    keys = KeySpace("clix", slots)
    for scope in (
        Scope("p", "c", "k"),
        Scope("p:1", "camp/é", "key:*?[x] 2"),
        Scope("p", "c", "k"),
    ):
        campaign, key = scope.campaign_id, scope.idempotency_key
        one_by_one = [
            keys.lease(scope),
            keys.done(scope),
            keys.dead(scope),
            keys.meta(scope),
            keys.pending(campaign, key),
            keys.bucket_for(campaign, key).pending_index,
            keys.scheduled(campaign, key),
            keys.cancelled(campaign, key),
        ]
        assert keys.scope_keys(scope) + keys.hold_keys(scope) == one_by_one
        # callers may extend what they are given: the kept keys stay as they were
        keys.scope_keys(scope).append("extra")
        assert keys.scope_keys(scope) == one_by_one[:6]


def test_dlq_lists_entries_of_every_bucket_oldest_first_and_finds_each_by_id(
    conn: SlotCheckingRedis, layout: KeySpace
) -> None:
    clock = [1_800_000_000.0]
    dlq = DeadLetterQueue(conn, layout, ttl_s=60, clock=lambda: clock[0])
    ids = []
    for scope in _scopes(30):
        clock[0] += 1
        entry = dlq.new_entry(reason="rejected", error="x", trigger=_kwargs(scope))
        ids.append(dlq.add(entry))
    assert len({layout.bucket_of_entry(i).number for i in ids}) > 5
    assert [e["id"] for e in dlq.entries()] == ids
    assert [e["id"] for e in dlq.entries(limit=4)] == ids[:4]
    assert dlq.ids(limit=3) == ids[:3]
    assert dlq.depth() == 30
    assert [e["id"] if e else None for e in dlq.get_many([ids[7], "0-0-3"])] == [ids[7], None]


def test_reconciler_reads_the_oldest_pending_records_of_all_buckets(
    conn: SlotCheckingRedis, layout: KeySpace
) -> None:
    pending = PendingLedger(conn, layout, ttl_s=60)
    scopes = _scopes(12)
    for n, scope in enumerate(scopes):
        pending.record([_kwargs(scope)], enqueued_at_ms=1_000 + n)
    oldest = pending.older_than(2_000, limit=5)
    assert oldest == [layout.pending(s.campaign_id, s.idempotency_key) for s in scopes[:5]]
    for key in oldest:
        pending.forget(key)
    assert pending.depth() == 7


def test_a_cluster_store_gets_16_buckets_no_results_and_a_broker_of_its_own() -> None:
    settings = Settings(
        redis_url=CLUSTER_URL,
        celery_broker_url="redis://broker:6379/0",
        _env_file=None,  # type: ignore[call-arg]
    )
    assert KeySpace.of(settings) == KeySpace("clix", 16)
    assert celery_config(settings)["result_backend"] is None
    assert cluster_nodes(CLUSTER_URL) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({}, "CELERY_BROKER_URL"),
        ({"celery_broker_url": CLUSTER_URL}, "CELERY_BROKER_URL"),
        ({"celery_broker_url": "amqp://rabbit//", "clix_key_slots": 1}, "CLIX_KEY_SLOTS"),
    ],
)
def test_settings_refuse_a_cluster_broker_and_an_untagged_cluster_layout(
    overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        Settings(redis_url=CLUSTER_URL, _env_file=None, **overrides)  # type: ignore[call-arg]


def _kwargs(scope: Scope) -> dict[str, Any]:
    return {"campaign_id": scope.campaign_id, "idempotency_key": scope.idempotency_key}
