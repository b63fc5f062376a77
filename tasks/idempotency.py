"""The idempotency store: an execution-time ledger in Redis, one entry per scope.

A scope (project, campaign, idempotency key) is in one of these states::

    (nothing) --claim: SET NX PX--> in flight (lease, owner "task_id|nonce")
    in flight --commit-----------> done (trigger_id, TTL)
    in flight --release----------> (nothing)         retryable failure, requeued
    in flight --dead-letter------> dead (DLQ entry id, TTL)   see tasks.dlq
    in flight --lease expires----> (nothing)         the owner died

What a delivery does with each answer of :meth:`IdempotencyStore.claim`:

* ``CLAIMED``: it owns the scope and may send;
* ``DONE`` / ``DEAD``: acknowledge; the stored ``trigger_id`` is the result;
* ``OWN_LIVE``: a copy of the *same* message (same task id) holds a live
  lease; that first delivery is still running, so wait and claim again;
* ``OTHER``: a *different* message holds the scope; acknowledge as duplicate.

Every write after the claim compares the owner atomically (Lua), so a delivery
that lost its lease cannot commit or release someone else's claim. A lease
that lapsed while nobody else took the scope is taken again by its owner
(renew, extend): only a real takeover ends a delivery. Every script is safe to
repeat when a dropped connection loses its reply (the claim and each attempt
number are registered once per owner, a commit that landed answers the same),
which is what lets the Redis client reconnect and repeat them. Before each
HTTP attempt the owner renews its lease and marks the scope ``sending``; a
claim that finds ``sending`` set took over from an owner that died mid-request,
which is the one ambiguous duplicate the system allows: it is flagged so the
caller counts and logs it.

Replication: on a Redis with replicas (Sentinel), a commit the primary
acknowledged may not have reached a replica when the primary dies; the
promoted replica then has no done record and the message, acknowledged or
not, can be sent again. ``commit_replicas`` > 0 sends ``WAIT`` right behind
the commit, in the same round trip, so the message is acknowledged only once
that many replicas have the commit (or ``commit_wait_ms`` passed, which is
logged).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis

from config.keys import KeySpace, Scope, as_text
from tasks import ledger_scripts
from tasks.ratelimit import SlotRequest

__all__ = ["Claim", "ClaimState", "IdempotencyStore", "ResultRecord", "Status", "new_owner"]

logger = logging.getLogger("clix.trigger")


class ClaimState(enum.Enum):
    """Answers of :meth:`IdempotencyStore.claim`."""

    CLAIMED = "claimed"
    DONE = "done"
    DEAD = "dead"
    OWN_LIVE = "own_live"
    OTHER = "other"
    #: cancelled before it was sent (tasks.cancel): acknowledge, send nothing
    CANCELLED = "cancelled"
    #: scheduled and not yet due, or due under another message's task id
    #: (tasks.schedule): only the scheduled message sends, at its time
    SCHEDULED = "scheduled"


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of one claim."""

    state: ClaimState
    deliveries: int = 0
    attempts: int = 0
    took_over_mid_request: bool = False
    trigger_id: str | None = None
    dead_entry_id: str | None = None
    lease_left_ms: int = 0
    first_seen: float | None = None
    #: the first request's rate-limit slot, reserved by the claim: microseconds
    #: to wait for it; None when none was reserved (too far ahead, or not asked)
    slot_wait_us: int | None = None
    #: SCHEDULED: the task id of the message that will send at the due time
    scheduled_task_id: str | None = None


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """The Celery result a commit writes in the same step (Celery's Redis backend format)."""

    key: bytes | str
    value: bytes | str
    ttl_s: int


@dataclass(frozen=True, slots=True)
class Status:
    """What the ledger knows about a scope (for ``clix-worker status``)."""

    state: str  # "queued" | "in_flight" | "done" | "unknown"
    trigger_id: str | None = None
    dead_entry_id: str | None = None


def done_trigger_id(raw: bytes | str) -> str:
    """The ``trigger_id`` of a done record: the bare id (records before 0.2: JSON).

    A ``|`` and the trigger's attempt history may follow it (:mod:`tasks.history`).
    """
    text = as_text(raw)
    if text.startswith("{"):
        return str(json.loads(text)["trigger_id"])
    return text.partition("|")[0]


#: Nonces of owner tokens. Seeded from the OS's entropy once per process (and
#: again in a forked child, whose copy would repeat its parent's): a uuid4 per
#: delivery read ``getrandom`` while holding the GIL, about 5 µs a trigger.
_NONCES = random.Random()
os.register_at_fork(after_in_child=_NONCES.seed)


def new_owner(task_id: str) -> str:
    """Owner token of one delivery: the task id plus a 48-bit nonce unique to this delivery."""
    return f"{task_id}|{_NONCES.getrandbits(48):012x}"


class IdempotencyStore:
    """The ledger. ``redis`` is built once per process and injected."""

    def __init__(
        self,
        redis_client: redis.Redis,
        keys: KeySpace,
        *,
        lease_ms: int,
        ttl_s: int,
        clock: Callable[[], float] = time.time,
        commit_replicas: int = 0,
        commit_wait_ms: int = 50,
    ) -> None:
        self.redis = redis_client
        self.commit_replicas = commit_replicas
        self.commit_wait_ms = commit_wait_ms
        self._replicas_short = False
        self.keys = keys
        self.lease_ms = lease_ms
        self.ttl_s = ttl_s
        self._clock = clock
        self._claim = redis_client.register_script(ledger_scripts.CLAIM)
        self._renew = redis_client.register_script(ledger_scripts.RENEW)
        self._not_sent = redis_client.register_script(ledger_scripts.NOT_SENT)
        self._commit = redis_client.register_script(ledger_scripts.COMMIT)
        self._release = redis_client.register_script(ledger_scripts.RELEASE)
        self._extend = redis_client.register_script(ledger_scripts.EXTEND)

    def claim(
        self,
        scope: Scope,
        owner: str,
        *,
        redelivery_limit: int = 1_000_000,
        slot: SlotRequest | None = None,
    ) -> Claim:
        """Try to become the one delivery allowed to send for ``scope``.

        ``CLAIMED`` also registers the first attempt (the caller sends next)
        and reserves its rate-limit ``slot`` when given, unless ``deliveries``
        exceeds ``redelivery_limit``. A tagged layout (Redis Cluster) keeps the
        limiter in another slot: the slot is not reserved (``slot_wait_us`` is
        None) and the caller reserves it itself.
        """
        task_id = owner.rpartition("|")[0] or owner
        keys = self.keys.scope_keys(scope) + self.keys.hold_keys(scope)
        args: list[Any] = [
            owner,
            self.lease_ms,
            self.ttl_s,
            f"{self._clock():.3f}",
            task_id,
            redelivery_limit,
        ]
        if slot is not None and self.keys.claim_reserves_slot:
            keys.append(slot.key)
            args += [slot.interval_us, slot.tolerance_us, slot.max_wait_us, slot.now_us]
        reply: list[Any] = self._claim(keys=keys, args=args)
        state = ClaimState(as_text(reply[0]))
        if state is ClaimState.DONE:
            return Claim(state, trigger_id=done_trigger_id(reply[1]))
        if state is ClaimState.DEAD:
            return Claim(state, dead_entry_id=as_text(reply[1]))
        if state is ClaimState.SCHEDULED:
            return Claim(state, scheduled_task_id=as_text(reply[1]))
        if state is ClaimState.CANCELLED:
            return Claim(state)
        if state is ClaimState.OWN_LIVE:
            return Claim(state, lease_left_ms=max(0, int(reply[1])))
        if state is ClaimState.OTHER:
            return Claim(state)
        return Claim(
            state,
            deliveries=int(reply[1]),
            took_over_mid_request=as_text(reply[2]) == "1",
            attempts=int(reply[3]),
            first_seen=float(reply[4]),
            slot_wait_us=None if int(reply[5]) < 0 else int(reply[5]),
        )

    def renew(self, scope: Scope, owner: str, number: int) -> int | None:
        """Before attempt ``number``: extend the lease, mark ``sending``; return the attempt count.

        ``None`` means the scope is no longer ours (done, dead, or another owner).
        A lapsed lease that nobody took over is taken again.
        """
        attempts = int(
            self._renew(
                keys=self.keys.scope_keys(scope), args=[owner, self.lease_ms, self.ttl_s, number]
            )
        )
        return None if attempts < 0 else attempts

    def extend(self, scope: Scope, owner: str) -> bool:
        """Extend ``owner``'s lease without registering an attempt; False if not ours.

        A lease that lapsed while nobody else took the scope is taken again: a
        slow delivery must not mistake its own expired lease for a takeover.
        """
        return bool(self._extend(keys=self.keys.scope_keys(scope), args=[owner, self.lease_ms]))

    def not_sent(self, scope: Scope, owner: str) -> None:
        """After an attempt Clix certainly did not accept: clear ``sending``."""
        self._not_sent(keys=self.keys.scope_keys(scope), args=[owner])

    def commit(
        self,
        scope: Scope,
        owner: str,
        trigger_id: str,
        *,
        result: ResultRecord | None = None,
        attempt: str = "",
        history_cap: int = 0,
    ) -> bool:
        """Record the scope as done; ``False`` if another owner holds or finished it.

        Safe to repeat: a commit that already landed answers ``True`` again.
        ``result``: the task's Celery result, written in the same step.
        ``attempt``: the successful attempt's history entry (:mod:`tasks.history`).
        """
        keys: list[Any] = self.keys.scope_keys(scope)
        args: list[Any] = [owner, trigger_id, self.ttl_s, "", 0]
        if result is not None:
            keys.append(result.key)
            args[3:5] = [result.value, result.ttl_s]
        args += [attempt, history_cap]
        if self.commit_replicas:
            return self._commit_replicated(keys, args)
        return bool(self._commit(keys=keys, args=args))

    def _commit_replicated(self, keys: list[Any], args: list[Any]) -> bool:
        """The commit and ``WAIT`` in one round trip (no transaction: WAIT may not be in one)."""
        for _ in range(2):
            pipe = self.redis.pipeline(transaction=False)
            pipe.evalsha(self._commit.sha, len(keys), *keys, *args)
            pipe.wait(self.commit_replicas, self.commit_wait_ms)
            try:
                committed, replicas = pipe.execute()
            except redis.exceptions.NoScriptError:  # a new primary's empty script cache
                self.redis.script_load(ledger_scripts.COMMIT)
                continue
            short = int(replicas) < self.commit_replicas
            if short and not self._replicas_short:  # once, not at every commit of an outage
                logger.warning(
                    "commit reached %s of %s replicas within %s ms (said once until they confirm "
                    "again)",
                    replicas,
                    self.commit_replicas,
                    self.commit_wait_ms,
                )
            self._replicas_short = short
            return bool(committed)
        raise redis.exceptions.NoScriptError("the commit script could not be loaded")

    def release(
        self, scope: Scope, owner: str, *, uncount: bool = False, unsent: bool = False
    ) -> bool:
        """Give the claim up (retryable failure); only the owner can.

        ``uncount``: the delivery ended for a reason outside the message (open
        breaker, 401, 429s), so it does not count towards the redelivery limit.
        ``unsent``: the attempt registered last was never sent (the gate refused it).
        """
        flags = ["1" if uncount else "0", "1" if unsent else "0"]
        return bool(self._release(keys=self.keys.scope_keys(scope), args=[owner, *flags]))

    def meta(self, scope: Scope) -> dict[str, str]:
        """The scope's counters (deliveries, attempts, first_seen)."""
        raw = self.redis.hgetall(self.keys.meta(scope))
        return {as_text(k): as_text(v) for k, v in raw.items()}

    def status(self, scope: Scope) -> Status:
        """The scope's state as ``status`` shows it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.done(scope))
        pipe.exists(self.keys.lease(scope))
        pipe.get(self.keys.dead(scope))
        pipe.exists(self.keys.pending(scope.campaign_id, scope.idempotency_key))
        done, leased, dead, pending = pipe.execute()
        if done is not None:
            return Status("done", trigger_id=done_trigger_id(done))
        if leased:
            return Status("in_flight")
        if dead is not None:  # a copy enqueued again stays dead until the entry is replayed
            return Status("unknown", dead_entry_id=as_text(dead))
        if pending:
            return Status("queued")
        return Status("unknown")

    def projects_for(self, campaign_id: str, idempotency_key: str) -> list[str]:
        """Projects that have ledger state for this campaign and key (a SCAN: ops use only)."""
        projects: set[str] = set()
        for state in ("done", "lease", "dead"):
            pattern = self.keys.scope_pattern(state, campaign_id, idempotency_key)
            for key in self.redis.scan_iter(match=pattern, count=1000):
                projects.add(unquote(as_text(key).split(":")[-3]))
        return sorted(projects)

    def count(self, counter: str, amount: int = 1) -> int:
        """Increment a fleet-wide counter (``ambiguous_duplicates``...)."""
        return int(self.redis.hincrby(self.keys.stats, counter, amount))
