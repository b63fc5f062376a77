"""The pending ledger: every trigger accepted by a producer until it is done or dead-lettered.

The broker alone cannot promise "accepted means delivered": kombu's Redis
transport pops a message before it records it as unacknowledged (a worker
killed in between loses it), a broker Redis without AOF forgets its queues on
restart, and a publish can fail after the application thought it enqueued. So
``enqueue_trigger`` first writes a pending record in the store's Redis (one
pipelined round trip; the bulk path batches them), then publishes. The worker
clears the record in the same atomic step that commits the trigger as done or
dead-letters it (the ledger and DLQ scripts), so a trigger is always in exactly
one of: pending, in flight, done, dead-lettered. The reconciler
(:mod:`tasks.reconciler`) re-publishes what stays pending.

Records are keyed by campaign and idempotency key, not by project: producers do
not know the project id (Clix campaign ids are unique across projects). A
record is a JSON string ``{"kwargs": ..., "enqueued_at_ms": ...}`` plus a member
of the index sorted set scored by that time, and it expires with the
idempotency TTL, never earlier.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from config.keys import KeySpace

__all__ = ["ENQUEUED_AT_HEADER", "PendingLedger", "PendingTrigger"]

#: Message header carrying the enqueue time (ms) that the pending record has
#: too: the reconciler compares it with the oldest message still queued.
ENQUEUED_AT_HEADER = "clix_enqueued_at_ms"


@dataclass(frozen=True, slots=True)
class PendingTrigger:
    """One pending record."""

    key: str  # the Redis key (also the index member)
    kwargs: dict[str, Any]
    enqueued_at_ms: int


class PendingLedger:
    """Write, read and clear pending records. ``redis`` is the store's, injected."""

    def __init__(
        self,
        redis_client: redis.Redis,
        keys: KeySpace,
        *,
        ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.ttl_s = ttl_s
        self._clock = clock

    def now_ms(self) -> int:
        """The enqueue time to stamp on a record and its message."""
        return int(self._clock() * 1000)

    def record(self, triggers: Iterable[dict[str, Any]], enqueued_at_ms: int) -> None:
        """Write pending records for valid trigger kwargs, in one pipelined round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for kwargs in triggers:
            key = self.keys.pending(kwargs["campaign_id"], kwargs["idempotency_key"])
            value = {"kwargs": kwargs, "enqueued_at_ms": enqueued_at_ms}
            pipe.set(key, json.dumps(value, separators=(",", ":")), ex=self.ttl_s)
            pipe.zadd(self.keys.pending_index, {key: enqueued_at_ms})
        pipe.execute()

    def get(self, key: str) -> PendingTrigger | None:
        """The record at ``key`` (an index member), or None."""
        raw = self.redis.get(key)
        if raw is None:
            return None
        data = json.loads(raw)
        return PendingTrigger(key, dict(data["kwargs"]), int(data["enqueued_at_ms"]))

    def exists(self, campaign_id: str, idempotency_key: str) -> bool:
        """Whether a trigger is pending (``status`` shows it as queued)."""
        return bool(self.redis.exists(self.keys.pending(campaign_id, idempotency_key)))

    def older_than(self, cutoff_ms: int, limit: int) -> list[str]:
        """Keys of up to ``limit`` records enqueued before ``cutoff_ms``, oldest first."""
        members = self.redis.zrangebyscore(
            self.keys.pending_index, "-inf", cutoff_ms, start=0, num=limit
        )
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def requeued(self, record: PendingTrigger, enqueued_at_ms: int) -> None:
        """The reconciler published it again: restamp record and index, if still pending.

        ``XX`` on both: a worker may have finished the trigger (clearing the
        record) between the publish and this restamp; it must not come back.
        """
        value = {"kwargs": record.kwargs, "enqueued_at_ms": enqueued_at_ms}
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(record.key, json.dumps(value, separators=(",", ":")), ex=self.ttl_s, xx=True)
        pipe.zadd(self.keys.pending_index, {record.key: enqueued_at_ms}, xx=True)
        pipe.execute()

    def postpone(self, key: str, now_ms: int) -> None:
        """Look at this record again one grace period from now (it is in flight)."""
        self.redis.zadd(self.keys.pending_index, {key: now_ms}, xx=True)

    def forget(self, key: str) -> None:
        """Drop a record and its index entry (the trigger is done or dead)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zrem(self.keys.pending_index, key)
        pipe.execute()

    def depth(self) -> int:
        """Number of pending triggers."""
        return int(self.redis.zcard(self.keys.pending_index))
