"""The pending ledger: every trigger accepted by a producer until it is done or dead-lettered.

The broker alone cannot promise "accepted means delivered": kombu's Redis
transport pops a message before it records it as unacknowledged (a worker
killed in between loses it), a broker Redis without AOF forgets its queues on
restart, and a publish can fail after the application thought it enqueued. So
every publish of ``trigger_campaign`` through this project's app first writes a
pending record in the store's Redis (one round trip; the bulk path writes 500
per round trip, one per bucket of the key layout on a cluster), then
publishes (:mod:`tasks.publishing`). The worker
clears the record in the same atomic step that commits the trigger as done or
dead-letters it (the ledger and DLQ scripts), so a trigger is always in exactly
one of: pending, in flight, done, dead-lettered. The reconciler
(:mod:`tasks.reconciler`) re-publishes what stays pending.

Records are keyed by campaign and idempotency key, not by project: producers do
not know the project id (Clix campaign ids are unique across projects). A
record is a JSON string ``{"kwargs": ..., "enqueued_at_ms": ...}`` plus a member
of its bucket's index sorted set (:mod:`config.keys`) scored by that time, and
it expires with the idempotency TTL, never earlier.

The enqueue time is the store's clock (Redis ``TIME``, read by the script that
writes the record), never the producer's: the reconciler compares it with its
own cutoff and with the stamps of other producers' messages, so hosts need not
agree on the time. The same stamp goes into the message header.

When the broker is the store's Redis (the default: ``CELERY_BROKER_URL`` unset),
a single publish does not write first and publish second:
:meth:`PendingLedger.carry` hands the publish a script that writes the record
and pushes the message together (:mod:`config.broker_transport`). That is one
round trip instead of two, record first: a message is never queued without
its record (a script that fails part way leaves at most the record, which
the reconciler publishes). The stamp must then be known before the script runs; it
comes from :class:`~tasks.store_clock.StoreClock`, the store's clock read once
every few seconds.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from config.broker_transport import carry
from config.keys import Bucket, KeySpace
from tasks.indexes import scored_range, total_members
from tasks.store_clock import StoreClock

__all__ = [
    "ENQUEUED_AT_HEADER",
    "RECORD_AND_PUSH_SCRIPT",
    "RECORD_SCRIPT",
    "PendingLedger",
    "PendingTrigger",
]

#: Message header carrying the enqueue time (ms) that the pending record has
#: too: the reconciler compares it with the oldest message still queued.
ENQUEUED_AT_HEADER = "clix_enqueued_at_ms"

#: Writes pending records. KEYS: the records' keys, then the index. ARGV: ttl_s,
#: stamp ('' = Redis TIME), then each record's kwargs as JSON. Returns the stamp.
#: TIME inside the script: one round trip, and the stamp is the store's clock.
#: Producers in other languages run this same script (examples/foreign-producer).
RECORD_SCRIPT = """
local stamp = ARGV[2]
if stamp == '' then
  local t = redis.call('TIME')
  stamp = string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000))
end
local index = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  local value = '{"kwargs":' .. ARGV[i + 2] .. ',"enqueued_at_ms":' .. stamp .. '}'
  redis.call('SET', KEYS[i], value, 'EX', ARGV[1])
  redis.call('ZADD', index, stamp, KEYS[i])
end
return tonumber(stamp)
"""

#: Writes one pending record and pushes its message (the broker is the store).
#: KEYS: the record's key, its index, the queue's list. ARGV: ttl_s, stamp, the
#: kwargs as JSON, the serialised message. The record first, as in two steps.
RECORD_AND_PUSH_SCRIPT = """
local value = '{"kwargs":' .. ARGV[3] .. ',"enqueued_at_ms":' .. ARGV[2] .. '}'
redis.call('SET', KEYS[1], value, 'EX', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return redis.call('LPUSH', KEYS[3], ARGV[4])
"""


@dataclass(frozen=True, slots=True)
class _RecordWrite:
    """A pending record written by the script that publishes its message (broker = store)."""

    record: redis.commands.core.Script  # RECORD_SCRIPT
    record_and_push: redis.commands.core.Script  # RECORD_AND_PUSH_SCRIPT
    keys: tuple[str, str]  # the record's key, its index
    args: tuple[str | int, ...]  # ttl_s, stamp, the kwargs as JSON

    def with_push(self, client: redis.Redis, queue_key: str, message: str) -> None:
        self.record_and_push(
            keys=[*self.keys, queue_key], args=[*self.args, message], client=client
        )

    def alone(self, client: redis.Redis) -> None:
        self.record(keys=list(self.keys), args=list(self.args), client=client)


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
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.ttl_s = ttl_s
        # None: the store's clock (Redis TIME), shared by every host (production);
        # a function (seconds): tests that move time by hand
        self._clock = clock
        self._store_clock = StoreClock(redis_client)
        self._record = redis_client.register_script(RECORD_SCRIPT)
        self._record_and_push = redis_client.register_script(RECORD_AND_PUSH_SCRIPT)

    def now_ms(self) -> int:
        """The store's time in ms: what records are stamped with and judged by."""
        if self._clock is not None:
            return int(self._clock() * 1000)
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def record(self, triggers: Iterable[dict[str, Any]], enqueued_at_ms: int | None = None) -> int:
        """Write pending records for trigger kwargs (a round trip per bucket); return their stamp.

        The stamp is the store's time (read by the script itself) unless
        ``enqueued_at_ms`` is given or the ledger has a test clock. Returns 0
        when there was nothing to record (and sends nothing).
        """
        by_bucket: dict[Bucket, tuple[list[str], list[str]]] = {}
        for kwargs in triggers:
            campaign, key = kwargs["campaign_id"], kwargs["idempotency_key"]
            keys, values = by_bucket.setdefault(self.keys.bucket_for(campaign, key), ([], []))
            keys.append(self.keys.pending(campaign, key))
            values.append(json.dumps(kwargs, separators=(",", ":")))
        if not by_bucket:
            return 0
        if enqueued_at_ms is None and self._clock is not None:
            enqueued_at_ms = self.now_ms()
        stamp = "" if enqueued_at_ms is None else str(int(enqueued_at_ms))
        # one script per bucket (its keys share a slot); the first one's stamp is the batch's
        for bucket, (keys, values) in by_bucket.items():
            stamp = str(
                self._record(keys=[*keys, bucket.pending_index], args=[self.ttl_s, stamp, *values])
            )
        return int(stamp)

    def carry(self, kwargs: dict[str, Any], message_id: str) -> int:
        """Have the publish of message ``message_id`` write its record too; return the stamp.

        For a broker that is this store's Redis, behind
        :func:`config.broker_transport.carries_pushes`: the next publish of
        that message runs :data:`RECORD_AND_PUSH_SCRIPT` on the broker's
        connection instead of its LPUSH (:data:`RECORD_SCRIPT` before kombu's
        own push, into a publish batch). Nothing is sent here. The stamp is
        the store's clock as :class:`~tasks.store_clock.StoreClock` tells it
        (the ledger's test clock, when it has one).
        """
        campaign, key = kwargs["campaign_id"], kwargs["idempotency_key"]
        stamp = self.now_ms() if self._clock is not None else self._store_clock.now_ms()
        write = _RecordWrite(
            self._record,
            self._record_and_push,
            (self.keys.pending(campaign, key), self.keys.bucket_for(campaign, key).pending_index),
            (self.ttl_s, stamp, json.dumps(kwargs, separators=(",", ":"))),
        )
        carry(message_id, write)
        return stamp

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
        """Keys of up to ``limit`` records enqueued before ``cutoff_ms``, oldest first.

        Reads up to ``limit`` from every bucket's index and keeps the oldest.
        """
        found: list[tuple[float, str]] = []
        for bucket in self.keys.buckets():
            found += scored_range(self.redis, bucket.pending_index, "-inf", cutoff_ms, num=limit)
        return [member for _, member in heapq.nsmallest(limit, found)]

    def requeued(self, record: PendingTrigger, enqueued_at_ms: int) -> None:
        """The reconciler published it again: restamp record and index, if still pending.

        ``XX`` on both: a worker may have finished the trigger (clearing the
        record) between the publish and this restamp; it must not come back.
        """
        value = {"kwargs": record.kwargs, "enqueued_at_ms": enqueued_at_ms}
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(record.key, json.dumps(value, separators=(",", ":")), ex=self.ttl_s, xx=True)
        pipe.zadd(self._index(record.key), {record.key: enqueued_at_ms}, xx=True)
        pipe.execute()

    def postpone(self, key: str, now_ms: int) -> None:
        """Look at this record again one grace period from now (it is in flight)."""
        self.redis.zadd(self._index(key), {key: now_ms}, xx=True)

    def forget(self, key: str) -> None:
        """Drop a record and its index entry (the trigger is done or dead)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zrem(self._index(key), key)
        pipe.execute()

    def depth(self) -> int:
        """Number of pending triggers."""
        return total_members(self.redis, [b.pending_index for b in self.keys.buckets()])

    def _index(self, key: str) -> str:
        return self.keys.bucket_of_key(key).pending_index
