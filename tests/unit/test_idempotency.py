"""The idempotency ledger on fakeredis: claim states, leases, owner-only writes."""

from __future__ import annotations

import json
import os
import time

import fakeredis
import pytest

from config.keys import KeySpace, Scope
from tasks.dlq import DeadLetterQueue
from tasks.idempotency import ClaimState, IdempotencyStore, ResultRecord, new_owner
from tasks.ratelimit import SlotRequest

SHORT_LEASE_MS = 50


@pytest.fixture
def short_store(fake_redis: fakeredis.FakeRedis, keys: KeySpace) -> IdempotencyStore:
    return IdempotencyStore(fake_redis, keys, lease_ms=SHORT_LEASE_MS, ttl_s=3_600)


def let_lease_expire() -> None:
    time.sleep(SHORT_LEASE_MS * 2 / 1000)


# --- owners ---------------------------------------------------------------------------


def test_new_owner_is_task_id_plus_a_fresh_nonce() -> None:
    a, b = new_owner("task-1"), new_owner("task-1")
    assert a != b
    assert a.rpartition("|")[0] == b.rpartition("|")[0] == "task-1"


def test_a_forked_child_draws_other_nonces_than_its_parent() -> None:
    # prefork pool processes are forks of one parent: copies of one generator
    # state would hand two deliveries of one message the same owner token
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next nonces, then leave without cleanup
        os.write(write, " ".join(new_owner("t") for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    parent = {new_owner("t") for _ in range(3)}
    assert len(child) == 3
    assert not child & parent


# --- claim states ---------------------------------------------------------------------


def test_first_claim_is_one_delivery_and_registers_its_first_attempt(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    claim = store.claim(scope, owner)
    assert claim.state is ClaimState.CLAIMED
    assert claim.deliveries == 1
    # the caller sends next: the claim already counts that request and marks it sending
    assert claim.attempts == 1
    assert claim.took_over_mid_request is False
    assert store.meta(scope)["sending"] == "1"
    assert store.meta(scope)["attempts"] == "1"
    assert fake_redis.get(keys.lease(scope)) == owner.encode()
    assert 0 < fake_redis.pttl(keys.lease(scope)) <= 30_000


def test_claim_over_the_redelivery_limit_registers_no_attempt(
    store: IdempotencyStore, scope: Scope
) -> None:
    first = new_owner("task-1")
    store.claim(scope, first, redelivery_limit=1)
    store.release(scope, first)
    claim = store.claim(scope, new_owner("task-1"), redelivery_limit=1)
    assert claim.state is ClaimState.CLAIMED
    assert claim.deliveries == 2
    # it will be dead-lettered, not sent: the attempt count stays the first delivery's
    assert claim.attempts == 1
    assert store.meta(scope)["attempts"] == "1"
    assert store.meta(scope)["sending"] == "0"


def test_claim_at_the_redelivery_limit_still_registers_its_attempt(
    store: IdempotencyStore, scope: Scope
) -> None:
    for expected in (1, 2):
        owner = new_owner("task-1")
        claim = store.claim(scope, owner, redelivery_limit=2)
        assert (claim.deliveries, claim.attempts) == (expected, expected)
        store.release(scope, owner)


def test_claim_after_commit_is_done_with_the_stored_trigger_id(
    store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.commit(scope, owner, "trg-42") is True
    for task_id in ("task-1", "task-2"):
        claim = store.claim(scope, new_owner(task_id))
        assert claim.state is ClaimState.DONE
        assert claim.trigger_id == "trg-42"


def test_copy_of_the_same_message_sees_own_live_while_the_lease_lives(
    store: IdempotencyStore, scope: Scope
) -> None:
    store.claim(scope, new_owner("task-1"))
    claim = store.claim(scope, new_owner("task-1"))
    assert claim.state is ClaimState.OWN_LIVE
    assert 0 < claim.lease_left_ms <= 30_000
    assert claim.deliveries == 0


def test_different_message_with_the_same_key_sees_other(
    store: IdempotencyStore, scope: Scope
) -> None:
    store.claim(scope, new_owner("task-1"))
    assert store.claim(scope, new_owner("task-2")).state is ClaimState.OTHER


def test_task_id_containing_a_bar_is_still_recognised_as_its_own(
    store: IdempotencyStore, scope: Scope
) -> None:
    store.claim(scope, new_owner("a|b"))
    assert store.claim(scope, new_owner("a|b")).state is ClaimState.OWN_LIVE
    assert store.claim(scope, new_owner("a")).state is ClaimState.OTHER


def test_claim_after_dead_lettering_is_dead_with_the_entry_id(
    store: IdempotencyStore, dlq: DeadLetterQueue, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry = dlq.new_entry(
        reason="rejected",
        error="400",
        trigger={"campaign_id": scope.campaign_id, "idempotency_key": scope.idempotency_key},
        project_id=scope.project_id,
    )
    entry_id = dlq.add(entry, scope=scope, owner=owner)
    for task_id in ("task-1", "task-2"):
        claim = store.claim(scope, new_owner(task_id))
        assert claim.state is ClaimState.DEAD
        assert claim.dead_entry_id == entry_id


# --- leases ---------------------------------------------------------------------------


def test_expired_lease_lets_the_same_message_take_over(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    short_store.claim(scope, new_owner("task-1"))
    assert short_store.claim(scope, new_owner("task-1")).state is ClaimState.OWN_LIVE
    let_lease_expire()
    claim = short_store.claim(scope, new_owner("task-1"))
    assert claim.state is ClaimState.CLAIMED
    assert claim.deliveries == 2


def test_expired_lease_of_a_dead_owner_frees_the_key_for_another_message(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    short_store.claim(scope, new_owner("task-1"))
    let_lease_expire()
    assert short_store.claim(scope, new_owner("task-2")).state is ClaimState.CLAIMED


def test_deliveries_counter_increments_per_successful_claim(
    store: IdempotencyStore, scope: Scope
) -> None:
    seen = []
    for _ in range(3):
        owner = new_owner("task-1")
        claim = store.claim(scope, owner)
        seen.append(claim.deliveries)
        store.claim(scope, new_owner("task-1"))  # OWN_LIVE: not a delivery
        store.release(scope, owner)
    assert seen == [1, 2, 3]
    assert store.meta(scope)["deliveries"] == "3"


def test_take_over_after_an_owner_died_mid_request_is_flagged(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    first = new_owner("task-1")
    assert short_store.claim(scope, first).attempts == 1  # sending its first request; it dies
    let_lease_expire()
    claim = short_store.claim(scope, new_owner("task-1"))
    assert claim.state is ClaimState.CLAIMED
    assert claim.took_over_mid_request is True
    assert claim.attempts == 2  # the dead owner's request and the one this claim registers


def test_take_over_after_an_owner_died_during_a_retry_is_flagged(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    first = new_owner("task-1")
    short_store.claim(scope, first)
    short_store.not_sent(scope, first)  # the first request got a 503
    assert short_store.renew(scope, first, 2) == 2  # sending the retry; then it dies
    let_lease_expire()
    claim = short_store.claim(scope, new_owner("task-1"))
    assert claim.took_over_mid_request is True
    assert claim.attempts == 3


def test_take_over_after_a_request_that_was_certainly_not_sent_is_not_flagged(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    first = new_owner("task-1")
    short_store.claim(scope, first)
    short_store.not_sent(scope, first)  # e.g. a 503 or a refused connection
    let_lease_expire()
    claim = short_store.claim(scope, new_owner("task-1"))
    assert claim.took_over_mid_request is False
    assert claim.attempts == 2


def test_took_over_flag_is_reported_once(short_store: IdempotencyStore, scope: Scope) -> None:
    first = new_owner("task-1")
    short_store.claim(scope, first)
    short_store.renew(scope, first, 2)
    let_lease_expire()
    second = new_owner("task-1")
    assert short_store.claim(scope, second).took_over_mid_request is True
    short_store.release(scope, second)
    assert short_store.claim(scope, new_owner("task-1")).took_over_mid_request is False


def test_not_sent_by_a_non_owner_changes_nothing(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    short_store.claim(scope, owner)
    short_store.renew(scope, owner, 2)
    short_store.not_sent(scope, new_owner("task-2"))
    assert short_store.meta(scope)["sending"] == "1"


# --- renew ----------------------------------------------------------------------------


def test_renew_returns_cumulative_attempts_across_deliveries(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    first = new_owner("task-1")
    assert short_store.claim(scope, first).attempts == 1  # attempt 1 comes with the claim
    assert [short_store.renew(scope, first, n) for n in (2, 3)] == [2, 3]  # attempts 2 and 3
    let_lease_expire()
    second = new_owner("task-1")
    assert short_store.claim(scope, second).attempts == 4
    assert short_store.renew(scope, second, 2) == 5
    assert short_store.meta(scope)["attempts"] == "5"


def test_renew_extends_the_lease(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    fake_redis.pexpire(keys.lease(scope), 1_000)
    store.renew(scope, owner, 2)
    assert fake_redis.pttl(keys.lease(scope)) > 1_000
    assert store.meta(scope)["sending"] == "1"


def test_renew_by_a_non_owner_returns_none_and_counts_nothing(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.not_sent(scope, owner)
    assert store.renew(scope, new_owner("task-2"), 2) is None
    assert store.renew(scope, new_owner("task-1"), 2) is None  # same task, other delivery
    assert fake_redis.get(keys.lease(scope)) == owner.encode()
    assert store.meta(scope)["attempts"] == "1"  # only the owner's claim counted
    assert store.meta(scope)["sending"] == "0"


def test_renew_of_a_done_scope_returns_none(store: IdempotencyStore, scope: Scope) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.commit(scope, owner, "trg-1")
    assert store.renew(scope, owner, 2) is None


def test_renew_of_a_dead_scope_returns_none(
    store: IdempotencyStore, dlq: DeadLetterQueue, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry = dlq.new_entry(reason="rejected", error="x", trigger={}, project_id=scope.project_id)
    dlq.add(entry, scope=scope, owner=owner)
    assert store.renew(scope, owner, 2) is None


# --- commit and release ---------------------------------------------------------------


def test_commit_by_another_owner_returns_false_and_writes_nothing(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.commit(scope, new_owner("task-2"), "trg-intruder") is False
    assert fake_redis.exists(keys.done(scope)) == 0
    assert fake_redis.get(keys.lease(scope)) == owner.encode()
    assert store.status(scope).state == "in_flight"


def test_commit_by_the_owner_records_done_and_drops_the_lease(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.commit(scope, owner, "trg-1") is True
    assert fake_redis.exists(keys.lease(scope)) == 0
    assert fake_redis.get(keys.done(scope)) == b"trg-1"  # the bare id: small in memory
    assert 3_590 < fake_redis.ttl(keys.done(scope)) <= 3_600
    assert store.status(scope).trigger_id == "trg-1"
    # the done record alone remembers it: the counters served the running delivery
    assert store.meta(scope) == {}


def test_a_done_record_written_before_0_2_as_json_still_reads(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    fake_redis.set(keys.done(scope), json.dumps({"trigger_id": "trg-old", "done_at": 1.0}))
    assert store.status(scope).trigger_id == "trg-old"
    assert store.claim(scope, new_owner("task-9")).trigger_id == "trg-old"


def test_commit_writes_the_celery_result_and_publishes_it_in_the_same_step(
    store: IdempotencyStore, scope: Scope, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    pubsub = fake_redis.pubsub()
    pubsub.subscribe("celery-task-meta-task-1")
    pubsub.get_message(timeout=1)  # the subscription confirmation
    record = ResultRecord("celery-task-meta-task-1", b'{"status": "SUCCESS"}', 600)
    assert store.commit(scope, owner, "trg-1", result=record) is True
    assert fake_redis.get("celery-task-meta-task-1") == b'{"status": "SUCCESS"}'
    assert 590 < fake_redis.ttl("celery-task-meta-task-1") <= 600
    message = pubsub.get_message(timeout=1)
    assert message is not None
    assert message["data"] == b'{"status": "SUCCESS"}'
    pubsub.close()


def test_a_claim_given_a_slot_request_reserves_the_first_requests_slot(
    store: IdempotencyStore, scope: Scope, fake_redis: fakeredis.FakeRedis
) -> None:
    slot = SlotRequest("rl", interval_us=1_000, tolerance_us=0, max_wait_us=5_000_000, now_us=10**9)
    first = store.claim(scope, new_owner("task-1"), slot=slot)
    assert first.slot_wait_us == 0
    other = Scope(scope.project_id, scope.campaign_id, "key-2")
    assert store.claim(other, new_owner("task-2"), slot=slot).slot_wait_us == 1_000
    assert int(fake_redis.get("rl")) == 10**9 + 2_000


def test_commit_after_own_lease_expired_with_nobody_else_holding_succeeds(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    short_store.claim(scope, owner)
    let_lease_expire()
    assert short_store.commit(scope, owner, "trg-late") is True
    status = short_store.status(scope)
    assert (status.state, status.trigger_id) == ("done", "trg-late")


def test_commit_after_another_delivery_took_over_is_refused(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    first = new_owner("task-1")
    short_store.claim(scope, first)
    let_lease_expire()
    second = new_owner("task-1")
    short_store.claim(scope, second)
    assert short_store.commit(scope, first, "trg-old") is False
    assert short_store.commit(scope, second, "trg-new") is True
    assert short_store.status(scope).trigger_id == "trg-new"


def test_release_by_another_owner_returns_false_and_keeps_the_lease(
    store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.release(scope, new_owner("task-2")) is False
    assert store.release(scope, new_owner("task-1")) is False
    assert store.status(scope).state == "in_flight"


def test_release_by_the_owner_frees_the_scope(store: IdempotencyStore, scope: Scope) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.release(scope, owner) is True
    assert store.status(scope).state == "unknown"
    assert store.claim(scope, new_owner("task-2")).state is ClaimState.CLAIMED


def test_release_of_a_done_scope_does_not_undo_it(store: IdempotencyStore, scope: Scope) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.commit(scope, owner, "trg-1")
    assert store.release(scope, owner) is False
    assert store.status(scope).state == "done"


def test_release_clears_sending(store: IdempotencyStore, scope: Scope) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.meta(scope)["sending"] == "1"
    assert store.release(scope, owner) is True
    assert store.meta(scope)["sending"] == "0"
    # so the next delivery is not flagged as taking over a request in flight
    assert store.claim(scope, new_owner("task-1")).took_over_mid_request is False


def test_release_keeps_the_delivery_counted_by_default(
    store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.release(scope, owner)
    assert store.meta(scope)["deliveries"] == "1"
    assert store.claim(scope, new_owner("task-1")).deliveries == 2


def test_release_uncounted_gives_the_delivery_back(store: IdempotencyStore, scope: Scope) -> None:
    for _ in range(3):  # e.g. three deliveries that met an open breaker or a 401
        owner = new_owner("task-1")
        assert store.claim(scope, owner).deliveries == 1
        assert store.release(scope, owner, uncount=True) is True
    assert store.meta(scope)["deliveries"] == "0"
    # the requests they sent are still counted
    assert store.meta(scope)["attempts"] == "3"


def test_release_uncounted_by_a_non_owner_changes_nothing(
    store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.release(scope, new_owner("task-2"), uncount=True) is False
    assert store.release(scope, new_owner("task-1"), uncount=True) is False
    assert store.meta(scope)["deliveries"] == "1"
    assert store.meta(scope)["sending"] == "1"
    assert store.status(scope).state == "in_flight"


# --- extend ---------------------------------------------------------------------------


def test_extend_by_the_owner_resets_the_lease_without_counting_an_attempt(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.not_sent(scope, owner)
    fake_redis.pexpire(keys.lease(scope), 1_000)
    assert store.extend(scope, owner) is True
    assert 1_000 < fake_redis.pttl(keys.lease(scope)) <= 30_000
    meta = store.meta(scope)
    assert (meta["attempts"], meta["sending"], meta["deliveries"]) == ("1", "0", "1")


def test_extend_by_a_non_owner_returns_false_and_leaves_the_lease(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    fake_redis.pexpire(keys.lease(scope), 1_000)
    assert store.extend(scope, new_owner("task-2")) is False
    assert store.extend(scope, new_owner("task-1")) is False  # same task, other delivery
    assert fake_redis.pttl(keys.lease(scope)) <= 1_000
    assert fake_redis.get(keys.lease(scope)) == owner.encode()


def test_extend_after_the_lease_lapsed_retakes_it_when_nobody_else_did(
    short_store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    short_store.claim(scope, owner)
    let_lease_expire()
    assert short_store.extend(scope, owner) is True
    assert fake_redis.get(keys.lease(scope)) == owner.encode()


def test_extend_after_the_lease_lapsed_and_another_claimed_is_refused(
    short_store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    short_store.claim(scope, owner)
    let_lease_expire()
    other = new_owner("task-1")
    assert short_store.claim(scope, other).state is ClaimState.CLAIMED
    assert short_store.extend(scope, owner) is False
    assert fake_redis.get(keys.lease(scope)) == other.encode()


def test_renew_after_the_lease_lapsed_retakes_it_when_nobody_else_did(
    short_store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    owner = new_owner("task-1")
    short_store.claim(scope, owner)
    let_lease_expire()
    assert short_store.renew(scope, owner, 2) == 2
    assert fake_redis.get(keys.lease(scope)) == owner.encode()


# --- repeated after a lost reply ------------------------------------------------------


def test_a_repeated_claim_of_the_same_owner_counts_nothing_twice(
    store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    first = store.claim(scope, owner)
    again = store.claim(scope, owner)  # the reply was lost; the client repeated the call
    assert again.state is ClaimState.CLAIMED
    assert (again.deliveries, again.attempts) == (first.deliveries, first.attempts) == (1, 1)
    assert store.meta(scope)["deliveries"] == "1"


def test_a_repeated_claim_still_reports_a_takeover_mid_request(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    dead = new_owner("task-1")
    short_store.claim(scope, dead)  # sending when it died
    let_lease_expire()
    owner = new_owner("task-1")
    assert short_store.claim(scope, owner).took_over_mid_request is True
    assert short_store.claim(scope, owner).took_over_mid_request is True


def test_a_repeated_renew_of_one_attempt_counts_it_once(
    store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert [store.renew(scope, owner, 2) for _ in range(3)] == [2, 2, 2]
    assert store.renew(scope, owner, 3) == 3


def test_a_repeated_commit_answers_true_again_and_keeps_the_record(
    store: IdempotencyStore, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.commit(scope, owner, "trg-1") is True
    assert store.commit(scope, owner, "trg-1") is True
    assert store.status(scope).trigger_id == "trg-1"


def test_a_commit_after_another_delivery_committed_keeps_the_first_trigger_id(
    short_store: IdempotencyStore, scope: Scope
) -> None:
    slow = new_owner("task-1")
    short_store.claim(scope, slow)
    let_lease_expire()
    fast = new_owner("task-1")
    short_store.claim(scope, fast)
    assert short_store.commit(scope, fast, "trg-fast") is True
    assert short_store.commit(scope, slow, "trg-slow") is False
    assert short_store.status(scope).trigger_id == "trg-fast"


def test_extend_of_a_done_scope_returns_false(store: IdempotencyStore, scope: Scope) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    store.commit(scope, owner, "trg-1")
    assert store.extend(scope, owner) is False
    assert store.status(scope).state == "done"


# --- status, meta, counters -----------------------------------------------------------


def test_status_moves_from_unknown_to_in_flight_to_done(
    store: IdempotencyStore, scope: Scope
) -> None:
    assert store.status(scope).state == "unknown"
    assert store.status(scope).dead_entry_id is None
    owner = new_owner("task-1")
    store.claim(scope, owner)
    assert store.status(scope).state == "in_flight"
    assert store.status(scope).trigger_id is None
    store.commit(scope, owner, "trg-9")
    status = store.status(scope)
    assert (status.state, status.trigger_id) == ("done", "trg-9")


def test_status_of_a_dead_scope_is_unknown_with_the_entry_id(
    store: IdempotencyStore, dlq: DeadLetterQueue, scope: Scope
) -> None:
    owner = new_owner("task-1")
    store.claim(scope, owner)
    entry = dlq.new_entry(reason="rejected", error="x", trigger={}, project_id=scope.project_id)
    entry_id = dlq.add(entry, scope=scope, owner=owner)
    status = store.status(scope)
    assert (status.state, status.trigger_id, status.dead_entry_id) == ("unknown", None, entry_id)


def test_first_seen_is_set_by_the_first_claim_and_kept(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace, scope: Scope
) -> None:
    now = [1_700_000_000.0]
    store = IdempotencyStore(fake_redis, keys, lease_ms=30_000, ttl_s=3_600, clock=lambda: now[0])
    owner = new_owner("task-1")
    assert store.claim(scope, owner).first_seen == 1_700_000_000.0
    store.release(scope, owner)
    now[0] += 500
    assert store.claim(scope, new_owner("task-1")).first_seen == 1_700_000_000.0


def test_meta_expires_with_the_idempotency_ttl(
    store: IdempotencyStore, scope: Scope, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    store.claim(scope, new_owner("task-1"))
    assert 3_590 < fake_redis.ttl(keys.meta(scope)) <= 3_600


def test_count_increments_a_fleet_wide_counter(
    store: IdempotencyStore, keys: KeySpace, fake_redis: fakeredis.FakeRedis
) -> None:
    assert store.count("ambiguous_duplicates") == 1
    assert store.count("ambiguous_duplicates", 2) == 3
    assert fake_redis.hget(keys.stats, "ambiguous_duplicates") == b"3"


# --- scopes and projects --------------------------------------------------------------


def test_projects_for_finds_every_project_with_state_for_the_key(store: IdempotencyStore) -> None:
    done_owner = new_owner("t1")
    store.claim(Scope("proj-a", "camp", "key"), done_owner)
    store.commit(Scope("proj-a", "camp", "key"), done_owner, "trg")
    store.claim(Scope("proj:b", "camp", "key"), new_owner("t2"))
    store.claim(Scope("proj-c", "camp", "other-key"), new_owner("t3"))
    store.claim(Scope("proj-d", "other-camp", "key"), new_owner("t4"))
    assert store.projects_for("camp", "key") == ["proj-a", "proj:b"]
    assert store.projects_for("camp", "missing") == []


def test_projects_for_treats_glob_chars_literally(store: IdempotencyStore) -> None:
    store.claim(Scope("proj", "campX", "key"), new_owner("t1"))
    store.claim(Scope("proj2", "camp*", "k?y"), new_owner("t2"))
    assert store.projects_for("camp*", "key") == []
    assert store.projects_for("camp*", "k?y") == ["proj2"]


def test_scopes_with_colons_in_ids_do_not_collide(store: IdempotencyStore) -> None:
    a = Scope("p", "a:b", "c")
    b = Scope("p", "a", "b:c")
    c = Scope("p:a", "b", "c")
    assert len({a.encoded(), b.encoded(), c.encoded()}) == 3
    owner = new_owner("t1")
    store.claim(a, owner)
    store.commit(a, owner, "trg-a")
    assert store.claim(b, new_owner("t2")).state is ClaimState.CLAIMED
    assert store.claim(c, new_owner("t3")).state is ClaimState.CLAIMED
    assert store.status(a).trigger_id == "trg-a"


def test_scope_encoding_is_percent_encoding_joined_by_colons() -> None:
    assert Scope("p 1", "a:b", "k/%").encoded() == "p%201:a%3Ab:k%2F%25"


def test_key_prefix_namespaces_the_ledger(fake_redis: fakeredis.FakeRedis, scope: Scope) -> None:
    one = IdempotencyStore(fake_redis, KeySpace("one"), lease_ms=30_000, ttl_s=3_600)
    two = IdempotencyStore(fake_redis, KeySpace("two"), lease_ms=30_000, ttl_s=3_600)
    one.claim(scope, new_owner("t1"))
    assert two.claim(scope, new_owner("t2")).state is ClaimState.CLAIMED
