"""The dead-letter queue on fakeredis: entries, ordering, scoped adds, replay, purge."""

from __future__ import annotations

import json
import re
from typing import Any

import fakeredis
import pytest
import redis

from config.keys import KeySpace, Scope
from tasks.dlq import REASONS, DeadLetterQueue, iso_time, scope_of
from tasks.errors import ReplayRefused
from tasks.idempotency import ClaimState, IdempotencyStore, new_owner

T0 = 1_700_000_000.0
ENTRY_FIELDS = {
    "id",
    "campaign_id",
    "idempotency_key",
    "reason",
    "status_code",
    "error",
    "attempts",
    "first_seen",
    "failed_at",
    "trigger",
}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed_dlq(fake_redis: fakeredis.FakeRedis, keys: KeySpace, clock: Clock) -> DeadLetterQueue:
    return DeadLetterQueue(fake_redis, keys, ttl_s=3_600, clock=clock)


def kwargs_of(scope: Scope, **more: Any) -> dict[str, Any]:
    return {"campaign_id": scope.campaign_id, "idempotency_key": scope.idempotency_key, **more}


def make_entry(dlq: DeadLetterQueue, scope: Scope, **more: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "reason": "rejected",
        "error": "Clix answered 400: bad",
        "trigger": kwargs_of(scope, properties={"order_id": "ORD-1"}),
        "status_code": 400,
        "attempts": 1,
        "project_id": scope.project_id,
        "task_id": "task-1",
    }
    options.update(more)
    return dlq.new_entry(**options)


def dlq_state(fake_redis: fakeredis.FakeRedis, keys: KeySpace) -> tuple[Any, Any]:
    return fake_redis.hgetall(keys.bucket(0).dlq_entries), fake_redis.zrange(
        keys.bucket(0).dlq_index, 0, -1
    )


# --- new_entry ------------------------------------------------------------------------


def test_new_entry_has_the_public_fields(timed_dlq: DeadLetterQueue, scope: Scope) -> None:
    trigger = kwargs_of(scope, audience={"broadcast": True})
    entry = timed_dlq.new_entry(
        reason="retries_exhausted",
        error="Clix answered 503: down",
        trigger=trigger,
        status_code=503,
        attempts=5,
        first_seen=T0 - 60,
        project_id=scope.project_id,
        task_id="task-1",
    )
    assert set(entry) >= ENTRY_FIELDS
    assert re.fullmatch(r"\d{13}-[0-9a-f]{8}", entry["id"])
    assert entry["id"].startswith(str(int(T0 * 1000)))
    assert entry["campaign_id"] == scope.campaign_id
    assert entry["idempotency_key"] == scope.idempotency_key
    assert entry["reason"] == "retries_exhausted"
    assert entry["status_code"] == 503
    assert entry["error"] == "Clix answered 503: down"
    assert entry["attempts"] == 5
    assert entry["first_seen"] == "2023-11-14T22:12:20.000+00:00"
    assert entry["failed_at"] == "2023-11-14T22:13:20.000+00:00"
    assert entry["trigger"] == trigger
    assert "raw" not in entry
    json.dumps(entry)  # storable as JSON


def test_new_entry_defaults_first_seen_to_now_and_status_to_null(
    timed_dlq: DeadLetterQueue,
) -> None:
    entry = timed_dlq.new_entry(reason="invalid_payload", error="bad", trigger={"x": 1})
    assert entry["first_seen"] == entry["failed_at"] == iso_time(T0)
    assert entry["status_code"] is None
    assert entry["attempts"] == 0


def test_new_entry_of_an_undecodable_message_keeps_raw_and_nulls(
    timed_dlq: DeadLetterQueue,
) -> None:
    entry = timed_dlq.new_entry(
        reason="invalid_payload", error="could not decode", trigger=None, raw="\x00garbage"
    )
    assert entry["raw"] == "\x00garbage"
    assert entry["trigger"] is None
    assert entry["campaign_id"] is None
    assert entry["idempotency_key"] is None


def test_new_entry_does_not_take_non_string_ids_from_a_bad_trigger(
    timed_dlq: DeadLetterQueue,
) -> None:
    entry = timed_dlq.new_entry(
        reason="invalid_payload", error="bad", trigger={"campaign_id": 5, "idempotency_key": None}
    )
    assert (entry["campaign_id"], entry["idempotency_key"]) == (None, None)
    assert entry["trigger"] == {"campaign_id": 5, "idempotency_key": None}


def test_new_entry_refuses_an_unknown_reason(timed_dlq: DeadLetterQueue) -> None:
    with pytest.raises(ValueError, match="unknown DLQ reason 'oops'"):
        timed_dlq.new_entry(reason="oops", error="x", trigger={})


def test_reasons_are_the_four_public_ones() -> None:
    assert set(REASONS) == {"invalid_payload", "rejected", "retries_exhausted", "redelivery_limit"}


# --- add, get, entries ----------------------------------------------------------------


def test_entries_are_listed_oldest_failure_first(timed_dlq: DeadLetterQueue, clock: Clock) -> None:
    clock.now = T0 + 20
    late = timed_dlq.add(make_entry(timed_dlq, Scope("p", "c", "late")))
    clock.now = T0 + 10
    early = timed_dlq.add(make_entry(timed_dlq, Scope("p", "c", "early")))
    clock.now = T0 + 30
    latest = timed_dlq.add(make_entry(timed_dlq, Scope("p", "c", "latest")))
    assert timed_dlq.ids() == [early, late, latest]
    assert [e["idempotency_key"] for e in timed_dlq.entries()] == ["early", "late", "latest"]
    assert [e["id"] for e in timed_dlq.entries(limit=2)] == [early, late]
    assert timed_dlq.depth() == 3


def test_entries_of_an_empty_dlq_is_an_empty_list(dlq: DeadLetterQueue) -> None:
    assert dlq.entries() == []
    assert dlq.depth() == 0


def test_get_returns_the_stored_entry_or_none(dlq: DeadLetterQueue, scope: Scope) -> None:
    entry = make_entry(dlq, scope)
    entry_id = dlq.add(entry)
    assert entry_id == entry["id"]
    assert dlq.get(entry_id) == entry
    assert dlq.get("0000000000000-missing") is None


def test_add_without_scope_leaves_the_ledger_alone(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    dlq.add(make_entry(dlq, scope))
    assert store.status(scope).state == "in_flight"
    assert store.status(scope).dead_entry_id is None


def test_add_with_scope_marks_it_dead_and_drops_the_owners_lease(
    dlq: DeadLetterQueue,
    store: IdempotencyStore,
    scope: Scope,
    keys: KeySpace,
    fake_redis: fakeredis.FakeRedis,
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.renew(scope, owner, 2)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    assert fake_redis.exists(keys.lease(scope)) == 0
    assert fake_redis.get(keys.dead(scope)) == entry_id.encode()
    assert 3_590 < fake_redis.ttl(keys.dead(scope)) <= 3_600
    assert store.meta(scope)["sending"] == "0"
    assert store.status(scope).dead_entry_id == entry_id
    assert store.claim(scope, new_owner("task-2")).state is ClaimState.DEAD


def test_add_with_scope_held_by_another_owner_keeps_their_lease(
    dlq: DeadLetterQueue,
    store: IdempotencyStore,
    scope: Scope,
    keys: KeySpace,
    fake_redis: fakeredis.FakeRedis,
) -> None:
    holder = new_owner("task-2")
    store.claim(scope, holder)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=new_owner("task-1"))
    assert dlq.get(entry_id) is not None
    assert fake_redis.get(keys.lease(scope)) == holder.encode()
    assert fake_redis.exists(keys.dead(scope)) == 0


def test_add_with_scope_of_a_done_key_does_not_mark_it_dead(
    dlq: DeadLetterQueue,
    store: IdempotencyStore,
    scope: Scope,
    keys: KeySpace,
    fake_redis: fakeredis.FakeRedis,
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.commit(scope, owner, "trg-1")
    dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    assert fake_redis.exists(keys.dead(scope)) == 0
    assert store.status(scope).trigger_id == "trg-1"


def test_scope_of_an_entry_needs_project_campaign_and_key(
    dlq: DeadLetterQueue, scope: Scope
) -> None:
    assert scope_of(make_entry(dlq, scope)) == scope
    assert scope_of(make_entry(dlq, scope, project_id=None)) is None
    assert scope_of(dlq.new_entry(reason="invalid_payload", error="x", trigger=None)) is None


# --- replay ---------------------------------------------------------------------------


def test_replay_publishes_the_original_kwargs_clears_the_mark_and_removes_the_entry(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    trigger = kwargs_of(
        scope,
        audience={"targets": [{"device_id": "d9"}]},
        properties={"order_id": "ORD-1", "n": 3},
    )
    entry_id = dlq.add(make_entry(dlq, scope, trigger=trigger), scope=scope, owner=owner)
    published: list[dict[str, Any]] = []

    def publish(kwargs: dict[str, Any]) -> str:
        published.append(kwargs)
        return "task-replayed"

    replayed = dlq.replay(entry_id, publish)
    assert (replayed.outcome, replayed.task_id) == ("replayed", "task-replayed")
    assert published == [trigger]
    assert dlq.get(entry_id) is None
    assert entry_id not in dlq.ids()
    assert store.status(scope).dead_entry_id is None
    claim = store.claim(scope, new_owner("task-replayed"))
    assert claim.state is ClaimState.CLAIMED
    # a replay starts a fresh redelivery budget
    assert claim.deliveries == 1


def test_replay_of_an_unknown_id_is_refused_and_changes_nothing(
    dlq: DeadLetterQueue, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    dlq.add(make_entry(dlq, scope))
    before = dlq_state(fake_redis, keys)
    published: list[object] = []
    with pytest.raises(ReplayRefused, match="no DLQ entry with id 'nope'"):
        dlq.replay("nope", published.append)  # type: ignore[arg-type]
    assert published == []
    assert dlq_state(fake_redis, keys) == before


def test_replay_of_an_undecodable_message_is_refused_and_keeps_it(
    dlq: DeadLetterQueue, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    entry_id = dlq.add(
        dlq.new_entry(reason="invalid_payload", error="undecodable", trigger=None, raw="%%%")
    )
    before = dlq_state(fake_redis, keys)
    published: list[object] = []
    with pytest.raises(ReplayRefused, match="could not be decoded"):
        dlq.replay(entry_id, published.append)  # type: ignore[arg-type]
    assert published == []
    assert dlq_state(fake_redis, keys) == before
    assert dlq.get(entry_id)["raw"] == "%%%"  # type: ignore[index]


def test_replay_whose_publish_raises_leaves_the_entry_in_place(
    dlq: DeadLetterQueue, scope: Scope
) -> None:
    entry_id = dlq.add(make_entry(dlq, scope))

    def broken_publish(kwargs: dict[str, Any]) -> str:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        dlq.replay(entry_id, broken_publish)
    assert dlq.ids() == [entry_id]
    assert dlq.get(entry_id) is not None


def test_replay_does_not_clear_a_newer_dead_mark_of_the_same_scope(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    # an old entry for the scope, then the scope dead-lettered again as a newer entry
    old_id = dlq.add(make_entry(dlq, scope))
    owner = new_owner("task-2")
    store.claim(scope, owner)
    new_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    dlq.replay(old_id, lambda kwargs: "t")
    assert store.status(scope).dead_entry_id == new_id


# --- purge ----------------------------------------------------------------------------


def test_purge_removes_only_the_named_ids_and_returns_those_that_existed(
    timed_dlq: DeadLetterQueue, clock: Clock
) -> None:
    ids = []
    for n in range(4):
        clock.now = T0 + n
        ids.append(timed_dlq.add(make_entry(timed_dlq, Scope("p", "c", f"k{n}"))))
    removed = timed_dlq.purge([ids[1], "0000000000000-missing", ids[3]])
    assert removed == [ids[1], ids[3]]
    assert timed_dlq.ids() == [ids[0], ids[2]]
    assert timed_dlq.get(ids[1]) is None


def test_purge_of_a_dead_entry_frees_its_scope(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    assert dlq.purge([entry_id]) == [entry_id]
    assert store.claim(scope, new_owner("task-2")).state is ClaimState.CLAIMED


def test_purge_of_nothing_returns_nothing(dlq: DeadLetterQueue, scope: Scope) -> None:
    dlq.add(make_entry(dlq, scope))
    assert dlq.purge([]) == []
    assert dlq.depth() == 1


# --- replay never loses or doubles a trigger --------------------------------------------


def test_replay_whose_publish_fails_keeps_the_dead_mark_and_the_delivery_count(
    dlq: DeadLetterQueue,
    store: IdempotencyStore,
    scope: Scope,
    keys: KeySpace,
    fake_redis: fakeredis.FakeRedis,
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    fake_redis.hset(keys.meta(scope), "deliveries", "4")

    def broken_publish(kwargs: dict[str, Any]) -> str:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        dlq.replay(entry_id, broken_publish)
    assert store.status(scope).dead_entry_id == entry_id
    assert fake_redis.hget(keys.meta(scope), "deliveries") == b"4"
    # a copy of the trigger arriving now is still held back by the mark
    assert store.claim(scope, new_owner("task-9")).state is ClaimState.DEAD


def test_replay_publishes_a_copy_that_a_worker_can_claim_at_once(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    claims: list[ClaimState] = []

    def publish_and_consume(kwargs: dict[str, Any]) -> str:
        # a fast worker takes the message before replay() returns
        claims.append(store.claim(scope, new_owner("task-replayed")).state)
        return "task-replayed"

    dlq.replay(entry_id, publish_and_consume)
    assert claims == [ClaimState.CLAIMED]
    assert dlq.get(entry_id) is None


def test_replay_of_an_entry_whose_trigger_is_queued_again_publishes_nothing_more(
    dlq: DeadLetterQueue,
    store: IdempotencyStore,
    scope: Scope,
    keys: KeySpace,
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # the state an interrupted replay leaves: mark cleared, copy published (pending), entry kept
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    fake_redis.delete(keys.dead(scope))
    fake_redis.set(keys.pending(scope.campaign_id, scope.idempotency_key), "{}")
    published: list[dict[str, Any]] = []
    dlq.replay(entry_id, lambda kwargs: published.append(kwargs) or "t")  # type: ignore[func-returns-value]
    assert published == []
    assert dlq.get(entry_id) is None


def test_replay_of_an_entry_whose_key_is_done_removes_it_without_publishing(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    entry_id = dlq.add(make_entry(dlq, scope))
    owner = new_owner("task-2")
    store.claim(scope, owner)
    store.commit(scope, owner, "trg-7")
    published: list[dict[str, Any]] = []
    dlq.replay(entry_id, lambda kwargs: published.append(kwargs) or "t")  # type: ignore[func-returns-value]
    assert published == []
    assert dlq.ids() == []


def test_purge_keeps_the_delivery_count(
    dlq: DeadLetterQueue,
    store: IdempotencyStore,
    scope: Scope,
    keys: KeySpace,
    fake_redis: fakeredis.FakeRedis,
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    fake_redis.hset(keys.meta(scope), "deliveries", "6")
    assert dlq.purge([entry_id]) == [entry_id]
    # a poison message that comes back does not get a fresh redelivery budget
    assert fake_redis.hget(keys.meta(scope), "deliveries") == b"6"


# --- unscoped entries -------------------------------------------------------------------


def test_the_same_undecodable_message_dead_lettered_twice_is_one_entry(
    timed_dlq: DeadLetterQueue, clock: Clock
) -> None:
    # the consumer wrote the entry, then died before acknowledging: the message comes back
    first = timed_dlq.add(
        timed_dlq.new_entry(
            reason="invalid_payload", error="undecodable", trigger=None, task_id="t1", raw="%%%"
        )
    )
    clock.now += 5
    second = timed_dlq.add(
        timed_dlq.new_entry(
            reason="invalid_payload", error="undecodable", trigger=None, task_id="t1", raw="%%%"
        )
    )
    assert second == first
    assert timed_dlq.ids() == [first]


def test_different_undecodable_messages_are_different_entries(dlq: DeadLetterQueue) -> None:
    ids = {
        dlq.add(dlq.new_entry(reason="invalid_payload", error="x", trigger=None, raw=body))
        for body in ("%%%", "###")
    }
    assert len(ids) == 2
    assert dlq.depth() == 2


def test_an_undecodable_message_purged_and_seen_again_gets_an_entry_again(
    dlq: DeadLetterQueue,
) -> None:
    entry = dlq.new_entry(reason="invalid_payload", error="x", trigger=None, raw="%%%")
    dlq.purge([dlq.add(entry)])
    again = dlq.add(dlq.new_entry(reason="invalid_payload", error="x", trigger=None, raw="%%%"))
    assert dlq.ids() == [again]


# --- raw bodies -------------------------------------------------------------------------


def test_a_raw_body_is_capped_and_says_so(fake_redis: fakeredis.FakeRedis, keys: KeySpace) -> None:
    capped = DeadLetterQueue(fake_redis, keys, ttl_s=60, raw_max_bytes=1_024)
    body = "é" * 5_000  # 10,000 bytes of UTF-8
    entry = capped.new_entry(reason="invalid_payload", error="x", trigger=None, raw=body)
    assert len(entry["raw"].encode()) <= 1_024
    assert body.startswith(entry["raw"])
    assert entry["raw_truncated"] is True
    assert entry["raw_bytes"] == 10_000
    small = capped.new_entry(reason="invalid_payload", error="x", trigger=None, raw="ok")
    assert small["raw"] == "ok"
    assert "raw_truncated" not in small


# --- listing reads what it shows --------------------------------------------------------


class CountingRedis(fakeredis.FakeRedis):
    """fakeredis that records each command it is sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(args)
        return super().execute_command(*args, **options)


def test_entries_with_a_limit_reads_only_the_entries_it_shows(
    fake_server: fakeredis.FakeServer, keys: KeySpace, clock: Clock
) -> None:
    conn = CountingRedis(server=fake_server)
    queue = DeadLetterQueue(conn, keys, ttl_s=60, clock=clock)
    for n in range(50):
        clock.now = T0 + n
        queue.add(make_entry(queue, Scope("p", "c", f"k{n}")))
    conn.commands.clear()
    shown_entries = queue.entries(limit=2)
    assert [e["idempotency_key"] for e in shown_entries] == ["k0", "k1"]
    index_reads = [c for c in conn.commands if c[0] in ("ZRANGE", "ZRANGEBYSCORE")]
    assert index_reads, conn.commands
    # every read of the index is bounded: ZRANGEBYSCORE ... LIMIT offset count, count <= 2
    assert all(
        c[0] == "ZRANGEBYSCORE" and "LIMIT" in c and int(c[c.index("LIMIT") + 2]) <= 2
        for c in index_reads
    )
    requested = sum(len(c) - 2 for c in conn.commands if c[0] == "HMGET")
    requested += sum(1 for c in conn.commands if c[0] == "HGET")
    assert requested <= 2


def test_replay_whose_publish_fails_after_a_worker_took_the_copy_leaves_it_to_the_worker(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)

    def published_then_lost_the_confirm(kwargs: dict[str, Any]) -> str:
        store.claim(scope, new_owner("task-replayed"))  # the copy did reach a worker
        raise TimeoutError("no publisher confirm")

    with pytest.raises(TimeoutError):
        dlq.replay(entry_id, published_then_lost_the_confirm)
    assert store.status(scope).state == "in_flight"
    assert store.status(scope).dead_entry_id is None  # no mark to stop the running delivery
    assert dlq.get(entry_id) is not None  # and a re-run will find it in flight
    assert dlq.replay(entry_id, lambda kwargs: "never").outcome == "in_flight"
    assert dlq.get(entry_id) is None


def test_replay_interrupted_during_publish_puts_the_mark_back(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)

    def interrupted(kwargs: dict[str, Any]) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dlq.replay(entry_id, interrupted)
    assert store.status(scope).dead_entry_id == entry_id
    assert dlq.ids() == [entry_id]


def test_replay_of_an_entry_superseded_by_a_newer_one_removes_only_the_old(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    old_id = dlq.add(make_entry(dlq, scope))
    owner = new_owner("task-2")
    store.claim(scope, owner)
    new_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    published: list[dict[str, Any]] = []
    replayed = dlq.replay(old_id, lambda kwargs: published.append(kwargs) or "t")  # type: ignore[func-returns-value]
    assert (replayed.outcome, replayed.newer_entry_id) == ("superseded", new_id)
    assert published == []
    assert dlq.ids() == [new_id]


def test_replay_of_an_entry_without_project_publishes_unless_its_trigger_is_queued(
    dlq: DeadLetterQueue, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    first = dlq.add(make_entry(dlq, scope, project_id=None, task_id="a"))
    second = dlq.add(make_entry(dlq, scope, project_id=None, task_id="b"))
    assert dlq.replay(first, lambda kwargs: "t1").outcome == "replayed"
    fake_redis.set(keys.pending(scope.campaign_id, scope.idempotency_key), "{}")
    assert dlq.replay(second, lambda kwargs: "t2").outcome == "queued"
    assert dlq.ids() == []


def test_replay_runs_twice_in_a_row_publish_once(
    dlq: DeadLetterQueue, store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    published: list[dict[str, Any]] = []
    dlq.replay(entry_id, lambda kwargs: published.append(kwargs) or "t")  # type: ignore[func-returns-value]
    with pytest.raises(ReplayRefused, match="no DLQ entry"):
        dlq.replay(entry_id, lambda kwargs: published.append(kwargs) or "t")  # type: ignore[func-returns-value]
    assert len(published) == 1


def test_get_many_returns_entries_in_the_order_asked_with_none_for_missing(
    dlq: DeadLetterQueue,
) -> None:
    first = dlq.add(make_entry(dlq, Scope("p", "c", "k1")))
    second = dlq.add(make_entry(dlq, Scope("p", "c", "k2")))
    found = list(dlq.get_many([second, "0000000000000-missing", first]))
    assert [e and e["id"] for e in found] == [second, None, first]


def test_a_replay_cut_off_before_it_could_restore_the_mark_restores_it_when_run_again(
    dlq: DeadLetterQueue,
    store: IdempotencyStore,
    scope: Scope,
    keys: KeySpace,
    fake_redis: fakeredis.FakeRedis,
    fake_server: fakeredis.FakeServer,
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry_id = dlq.add(make_entry(dlq, scope), scope=scope, owner=owner)
    fake_redis.hset(keys.meta(scope), "deliveries", "4")

    def publish_and_lose_the_store(kwargs: dict[str, Any]) -> str:
        fake_server.connected = False  # the mark cannot be put back: as if killed here
        raise ConnectionError("broker down")

    with pytest.raises(redis.exceptions.ConnectionError):  # the store lost while putting back
        dlq.replay(entry_id, publish_and_lose_the_store)
    fake_server.connected = True
    assert store.status(scope).dead_entry_id is None

    def broker_still_down(kwargs: dict[str, Any]) -> str:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        dlq.replay(entry_id, broker_still_down)
    assert store.status(scope).dead_entry_id == entry_id
    assert fake_redis.hget(keys.meta(scope), "deliveries") == b"4"
    assert dlq.ids() == [entry_id]
