"""The dead-letter queue on fakeredis: entries, ordering, scoped adds, replay, purge."""

from __future__ import annotations

import json
import re
from typing import Any

import fakeredis
import pytest

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
    return fake_redis.hgetall(keys.dlq_entries), fake_redis.zrange(keys.dlq_index, 0, -1)


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

    assert dlq.replay(entry_id, publish) == "task-replayed"
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
