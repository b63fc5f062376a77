"""The dead-letter queue: triggers that can never succeed as they are, kept whole.

Entries live in the store's Redis (durable when Redis runs with AOF): a hash of
entry JSON by id and a sorted set of ids by failure time, so listing is oldest
first. An entry holds the original task kwargs (enough to replay unchanged),
the reason, the error, the last HTTP status, the attempt count and times. A
message that never decoded keeps its ``raw`` body instead and cannot be
replayed.

Dead-lettering a trigger is one atomic step with the ledger: the entry is
written, the scope is marked dead and the lease dropped together, so a copy of
the message that waits on the lease sees "dead" and stops, and nothing is ever
both in flight and in the DLQ. Replay clears the mark, publishes, then removes
the entry: a crash in between leaves the entry in place and the second publish
is harmless, because the ledger dedupes by key.

Reasons: ``invalid_payload``, ``rejected``, ``retries_exhausted``,
``redelivery_limit``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import redis

from config.keys import KeySpace, Scope, as_text
from tasks.errors import ReplayRefused
from tasks.pii import redact

__all__ = ["REASONS", "DeadLetterQueue", "iso_time", "shown"]

REASONS = ("invalid_payload", "rejected", "retries_exhausted", "redelivery_limit")

# KEYS: entries, index, lease, done, dead, meta, pending, pending index.
# ARGV: id, entry, score_ms, owner, ttl_s.  In the DLQ and no longer pending, in one step.
_DEAD_LETTER_SCOPED = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('DEL', KEYS[7])
redis.call('ZREM', KEYS[8], KEYS[7])
local holder = redis.call('GET', KEYS[3])
if (not holder) or holder == ARGV[4] then
  redis.call('DEL', KEYS[3])
  if redis.call('EXISTS', KEYS[4]) == 0 then
    redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[5])
  end
  redis.call('HSET', KEYS[6], 'sending', '0')
end
return 1
"""

# KEYS: dead, meta.  ARGV: entry id.  Forget the dead mark of this entry only.
_UNMARK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'deliveries', '0')
end
return 1
"""


def iso_time(epoch_s: float) -> str:
    """UTC ISO-8601 with milliseconds, as DLQ entries show times."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


class DeadLetterQueue:
    """List, inspect, replay and purge dead-lettered triggers."""

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
        self._scoped = redis_client.register_script(_DEAD_LETTER_SCOPED)
        self._unmark = redis_client.register_script(_UNMARK)

    def new_entry(
        self,
        *,
        reason: str,
        error: str,
        trigger: dict[str, Any] | None,
        status_code: int | None = None,
        attempts: int = 0,
        first_seen: float | None = None,
        project_id: str | None = None,
        task_id: str | None = None,
        raw: str | None = None,
    ) -> dict[str, Any]:
        """Build an entry (not yet stored) with the fields of DESIGN.md section 4."""
        if reason not in REASONS:
            raise ValueError(f"unknown DLQ reason {reason!r}")
        now = self._clock()
        kwargs = trigger if isinstance(trigger, dict) else {}
        entry: dict[str, Any] = {
            "id": f"{int(now * 1000):013d}-{uuid.uuid4().hex[:8]}",
            "campaign_id": _str_or_none(kwargs.get("campaign_id")),
            "idempotency_key": _str_or_none(kwargs.get("idempotency_key")),
            "reason": reason,
            "status_code": status_code,
            "error": error,
            "attempts": attempts,
            "first_seen": iso_time(first_seen if first_seen is not None else now),
            "failed_at": iso_time(now),
            "trigger": trigger,
            "project_id": project_id,
            "task_id": task_id,
        }
        if raw is not None:
            entry["raw"] = raw
        return entry

    def add(self, entry: dict[str, Any], *, scope: Scope | None = None, owner: str = "") -> str:
        """Store ``entry``; with a ``scope``, mark it dead and drop ``owner``'s lease atomically.

        Either way the trigger's pending record (if its campaign and key are
        known) is cleared in the same transaction.
        """
        encoded = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
        score = int(entry["id"].split("-", 1)[0])
        if scope is None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.keys.dlq_entries, entry["id"], encoded)
            pipe.zadd(self.keys.dlq_index, {entry["id"]: score})
            campaign, key = entry.get("campaign_id"), entry.get("idempotency_key")
            if isinstance(campaign, str) and isinstance(key, str):
                pending = self.keys.pending(campaign, key)
                pipe.delete(pending)
                pipe.zrem(self.keys.pending_index, pending)
            pipe.execute()
        else:
            self._scoped(
                keys=[self.keys.dlq_entries, self.keys.dlq_index, *self.keys.scope_keys(scope)],
                args=[entry["id"], encoded, score, owner, self.ttl_s],
            )
        return str(entry["id"])

    def depth(self) -> int:
        """Number of entries."""
        return int(self.redis.zcard(self.keys.dlq_index))

    def ids(self) -> list[str]:
        """Entry ids, oldest first."""
        return [as_text(i) for i in self.redis.zrange(self.keys.dlq_index, 0, -1)]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        """One entry, or ``None``."""
        raw = self.redis.hget(self.keys.dlq_entries, entry_id)
        return None if raw is None else dict(json.loads(raw))

    def entries(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries, oldest first."""
        ids = self.ids()[: limit if limit is not None else None]
        if not ids:
            return []
        raws = self.redis.hmget(self.keys.dlq_entries, ids)
        return [json.loads(r) for r in raws if r is not None]

    def replay(self, entry_id: str, publish: Callable[[dict[str, Any]], str]) -> str:
        """Publish the entry's trigger again, then remove the entry; return the new task id.

        ``publish`` validates and enqueues (it raises for a trigger that is still
        invalid, and the entry stays).
        """
        entry = self.get(entry_id)
        if entry is None:
            raise ReplayRefused(f"no DLQ entry with id {entry_id!r}")
        trigger = entry.get("trigger")
        if not isinstance(trigger, dict):
            raise ReplayRefused(
                f"DLQ entry {entry_id} holds a message that could not be decoded; "
                "it cannot be replayed (inspect it with `dlq show`, then purge it)"
            )
        self._forget_mark(entry)
        task_id = publish(trigger)
        self._remove([entry_id])
        return task_id

    def purge(self, entry_ids: Iterable[str]) -> list[str]:
        """Remove the named entries; return the ids that existed."""
        removed = []
        for entry_id in entry_ids:
            entry = self.get(entry_id)
            if entry is None:
                continue
            self._forget_mark(entry)
            self._remove([entry_id])
            removed.append(entry_id)
        return removed

    def _forget_mark(self, entry: dict[str, Any]) -> None:
        scope = scope_of(entry)
        if scope is not None:
            self._unmark(keys=[self.keys.dead(scope), self.keys.meta(scope)], args=[entry["id"]])

    def _remove(self, entry_ids: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.dlq_entries, *entry_ids)
        pipe.zrem(self.keys.dlq_index, *entry_ids)
        pipe.execute()


def shown(entry: dict[str, Any], pii_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The entry as listings show it: properties marked pii replaced by ``[redacted]``.

    The entry's own ``pii`` list (written when it was dead-lettered under a plan)
    is always applied; ``pii_keys`` adds those of the plans loaded now.
    """
    hidden = set(entry.get("pii") or ()) | set(pii_keys)
    trigger = entry.get("trigger")
    if not hidden or not isinstance(trigger, dict):
        return entry
    return {**entry, "trigger": redact(trigger, hidden)}


def scope_of(entry: dict[str, Any]) -> Scope | None:
    """The ledger scope an entry marked dead, if it had one."""
    project, campaign, key = (
        entry.get("project_id"),
        entry.get("campaign_id"),
        entry.get("idempotency_key"),
    )
    if isinstance(project, str) and isinstance(campaign, str) and isinstance(key, str):
        return Scope(project, campaign, key)
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
