"""The schedule: triggers accepted now and sent at a given time, kept in Redis.

A Celery ``countdown``/``eta`` would keep the message unacknowledged in a
worker's memory until its time (on a Redis broker it comes back after the
visibility timeout and piles up; a restart reorders it). A scheduled trigger
lives in the store instead, durable with AOF, until a mover in the worker fleet
publishes it (:mod:`tasks.mover`):

* a *scheduled record* per trigger, keyed by campaign and idempotency key like
  the pending record: a hash of the kwargs (JSON), the due time ``send_at_ms``,
  the ``task_id`` its message will carry and the name of its pending record;
* the *schedule*, a sorted set of record keys by due time: the mover reads the
  due ones with one bounded range, never a ``KEYS`` scan. There is one per
  bucket of the key layout (:mod:`config.keys`), beside the records it holds,
  and a take goes over every bucket.

The idempotency key is taken when the trigger is scheduled. Scheduling a key
that is already scheduled, queued (pending), cancelled or, for the producer's
own project, in flight, done or dead-lettered schedules nothing and answers
which. A *different* message with a scheduled key (an immediate enqueue of the
same key) is acknowledged as a duplicate by the ledger's claim: only the
message carrying the record's ``task_id`` may send.

Taking due triggers (:meth:`ScheduleStore.take`) is atomic and per record: it
writes each one's pending record (so the reconciler covers a message lost
later) and pushes its score ``retake_ms`` ahead, as a lease. The mover then
publishes and :meth:`ScheduleStore.finish` removes the records. A mover killed
in between leaves the records to be taken again by any worker after
``retake_ms``; a second publish carries the same ``task_id`` and the ledger
makes it harmless. Several workers may move at once: no record is taken twice
within its lease.

Times are the store's clock (Redis ``TIME``) except an absolute ``send_at``
given by the producer, which is what its caller meant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from config.keys import KeySpace, Scope, as_text
from tasks.indexes import total_members

__all__ = ["Due", "ScheduleStore", "Scheduled", "ScheduledRecord"]

# KEYS: scheduled record, schedule, pending record, cancelled marker, then
# (lease, done, dead) of the producer's project when it knows it.
# ARGV: kwargs JSON, send_at_ms ('' = store time + delay_ms), delay_ms, ttl_s, task_id.
# Returns {'scheduled', send_at_ms, task_id} or {state, send_at_ms or '', task_id or ''}.
_SCHEDULE = """
local existing = redis.call('HMGET', KEYS[1], 'send_at_ms', 'task_id')
if existing[1] then return {'scheduled_already', existing[1], existing[2]} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'cancelled', '', ''} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'queued', '', ''} end
if #KEYS >= 7 then
  if redis.call('EXISTS', KEYS[6]) == 1 then return {'done', '', ''} end
  if redis.call('EXISTS', KEYS[7]) == 1 then return {'dead_lettered', '', ''} end
  if redis.call('EXISTS', KEYS[5]) == 1 then return {'in_flight', '', ''} end
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = tonumber(ARGV[2])
if ARGV[2] == '' then due = now + tonumber(ARGV[3]) end
local due_s = string.format('%.0f', due)
redis.call('HSET', KEYS[1], 'kwargs', ARGV[1], 'send_at_ms', due_s, 'task_id', ARGV[5],
           'pending', KEYS[3])
-- remembered until its time, then as long as any other trigger state
local ttl = math.max(0, math.ceil((due - now) / 1000)) + tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], due_s, KEYS[1])
return {'scheduled', due_s, ARGV[5]}
"""

# KEYS: schedule, pending index.  ARGV: now_ms ('' = store time), limit, retake_ms, ttl_s.
# Returns {now, next due (-1: none), key1, kwargs1, send_at1, task_id1, key2, ...}.
_TAKE = """
local now = tonumber(ARGV[1])
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = t[1] * 1000 + math.floor(t[2] / 1000)
end
local now_s = string.format('%.0f', now)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_s, 'LIMIT', 0, ARGV[2])
local out = {now_s, '-1'}
for _, key in ipairs(members) do
  local r = redis.call('HMGET', key, 'kwargs', 'send_at_ms', 'task_id', 'pending')
  if not r[1] then
    redis.call('ZREM', KEYS[1], key)  -- expired or removed: nothing to send
  else
    redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[3])), key)
    redis.call('HSET', key, 'taken', now_s)  -- the pending record is the mover's now
    redis.call('SET', r[4], '{"kwargs":' .. r[1] .. ',"enqueued_at_ms":' .. now_s .. '}',
               'EX', ARGV[4])
    redis.call('ZADD', KEYS[2], now_s, r[4])
    table.insert(out, key)
    table.insert(out, r[1])
    table.insert(out, r[2])
    table.insert(out, r[3])
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then out[2] = first[2] else out[2] = '-1' end
return out
"""

# KEYS: the scheduled records published, then the schedule.
_FINISH = """
local schedule = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  redis.call('DEL', KEYS[i])
  redis.call('ZREM', schedule, KEYS[i])
end
return #KEYS - 1
"""


@dataclass(frozen=True, slots=True)
class Scheduled:
    """The answer to scheduling a trigger.

    ``state`` is ``scheduled`` (this call scheduled it), ``scheduled_already``
    (the key was scheduled before: ``send_at_ms`` and ``task_id`` are that
    record's) or the state that holds the key (``queued``, ``in_flight``,
    ``done``, ``dead_lettered``, ``cancelled``).
    """

    state: str
    send_at_ms: int | None = None
    task_id: str | None = None

    @property
    def taken(self) -> bool:
        """Whether this call scheduled the trigger."""
        return self.state == "scheduled"


@dataclass(frozen=True, slots=True)
class ScheduledRecord:
    """A trigger waiting for its time (for ``status``)."""

    kwargs: dict[str, Any]
    send_at_ms: int
    task_id: str


@dataclass(frozen=True, slots=True)
class Due:
    """A trigger a mover took: publish it with ``task_id``, then finish ``key``."""

    key: str
    kwargs: dict[str, Any]
    send_at_ms: int
    task_id: str


class ScheduleStore:
    """Schedule, take and finish scheduled triggers. ``redis`` is the store's, injected."""

    def __init__(self, redis_client: redis.Redis, keys: KeySpace, *, ttl_s: int) -> None:
        self.redis = redis_client
        self.keys = keys
        self.ttl_s = ttl_s
        self._schedule = redis_client.register_script(_SCHEDULE)
        self._take = redis_client.register_script(_TAKE)
        self._finish = redis_client.register_script(_FINISH)
        #: earliest due time left after the last take (None: nothing scheduled)
        self.next_due_ms: int | None = None
        #: whether the last take left due triggers behind (a bucket gave ``limit``)
        self.full = False

    def schedule(
        self,
        kwargs: dict[str, Any],
        *,
        send_at_ms: int | None = None,
        delay_ms: int = 0,
        project_id: str | None = None,
        task_id: str | None = None,
    ) -> Scheduled:
        """Schedule validated trigger kwargs at ``send_at_ms`` or ``delay_ms`` from now.

        ``project_id`` (the producer's, when it knows it) lets the ledger's
        in-flight, done and dead-lettered states count as taking the key too.
        """
        campaign, key = kwargs["campaign_id"], kwargs["idempotency_key"]
        keys = [
            self.keys.scheduled(campaign, key),
            self.keys.bucket_for(campaign, key).schedule,
            self.keys.pending(campaign, key),
            self.keys.cancelled(campaign, key),
        ]
        if project_id:
            scope = Scope(project_id, campaign, key)
            keys += [self.keys.lease(scope), self.keys.done(scope), self.keys.dead(scope)]
        reply: list[Any] = self._schedule(
            keys=keys,
            args=[
                json.dumps(kwargs, separators=(",", ":")),
                "" if send_at_ms is None else str(int(send_at_ms)),
                int(delay_ms),
                self.ttl_s,
                task_id or str(uuid.uuid4()),
            ],
        )
        state, due, task = (as_text(part) for part in reply)
        return Scheduled(state, int(due) if due else None, task or None)

    def get(self, campaign_id: str, idempotency_key: str) -> ScheduledRecord | None:
        """The scheduled record of a trigger, or None."""
        raw = self.redis.hmget(
            self.keys.scheduled(campaign_id, idempotency_key), "kwargs", "send_at_ms", "task_id"
        )
        if raw[0] is None:
            return None
        return ScheduledRecord(json.loads(raw[0]), int(as_text(raw[1])), as_text(raw[2]))

    def take(self, limit: int, retake_ms: int, now_ms: int | None = None) -> tuple[int, list[Due]]:
        """Take up to ``limit`` due triggers per bucket (store time unless ``now_ms``).

        Returns (now, them). :attr:`next_due_ms` is then the earliest due time
        left (None: nothing scheduled), and :attr:`full` whether some bucket had
        more due than ``limit`` (take again).
        """
        now, due, next_due, self.full = 0, [], [], False
        for bucket in self.keys.buckets():
            reply: list[Any] = self._take(
                keys=[bucket.schedule, bucket.pending_index],
                args=["" if now_ms is None else str(now_ms), limit, retake_ms, self.ttl_s],
            )
            now = max(now, int(reply[0]))
            if int(float(reply[1])) >= 0:
                next_due.append(int(float(reply[1])))
            taken = [
                Due(
                    as_text(reply[i]),
                    json.loads(reply[i + 1]),
                    int(reply[i + 2]),
                    as_text(reply[i + 3]),
                )
                for i in range(2, len(reply), 4)
            ]
            self.full = self.full or len(taken) >= limit
            due += taken
        self.next_due_ms = min(next_due, default=None)
        return now, due

    def finish(self, keys: Sequence[str]) -> None:
        """Remove the records of published triggers (one round trip per bucket)."""
        by_bucket: dict[str, list[str]] = {}
        for key in keys:
            by_bucket.setdefault(self.keys.bucket_of_key(key).schedule, []).append(key)
        for schedule, records in by_bucket.items():
            self._finish(keys=[*records, schedule])

    def depth(self) -> int:
        """Number of scheduled triggers (including ones taken but not yet finished)."""
        return total_members(self.redis, [b.schedule for b in self.keys.buckets()])
