"""The dead-letter queue: triggers that can never succeed as they are, kept whole.

Entries live in the store's Redis (durable when Redis runs with AOF): a hash of
entry JSON by id and a sorted set of ids by failure time, so listing is oldest
first and a time window is one ``ZRANGEBYSCORE``; one pair per bucket of the
key layout (:mod:`config.keys`: an entry lives with its trigger's keys, so
dead-lettering stays one step on a Redis Cluster), which listing merges. An entry holds the original
task kwargs (enough to replay unchanged), the reason, the error, the last HTTP
status, the attempt count and times. A message that never decoded keeps its
``raw`` body instead (capped at ``raw_max_bytes``) and cannot be replayed.

Dead-lettering a trigger is one atomic step with the ledger: the entry is
written, the scope is marked dead and the lease dropped together, so a copy of
the message that waits on the lease sees "dead" and stops, and nothing is ever
both in flight and in the DLQ. An entry without a scope (a message that never
decoded, a trigger without valid ids) is stored once per fingerprint, so the
same message dead-lettered again (its acknowledgement was lost) is not a
second entry.

Replay never loses or doubles a trigger:

1. *begin* (atomic): if the entry still holds its scope's dead mark, clear it
   (a copy published next must be claimable at once) and start a fresh
   redelivery budget; if the trigger is already back in the pipeline (done,
   in flight, queued, or dead-lettered again as a newer entry: what an
   interrupted replay leaves), publish nothing;
2. *publish*; if that fails, the mark and the delivery count are put back
   (unless a worker already took the copy), and the entry stays;
3. *finish* (atomic): remove the entry.

What step 1 cleared is recorded with the entry until it goes, so every step
is safe to repeat (the store client repeats a command whose reply a dropped
connection lost). Killed after 1 the entry stays and a re-run publishes it
(and still restores the mark if that publish fails); killed after 2 a re-run
finds the trigger back in the pipeline and only removes the entry.
Purge removes entries and frees their scope but keeps the delivery count, so
a message that crashed workers gets no fresh budget if it comes back.

Reasons: ``invalid_payload``, ``rejected``, ``retries_exhausted``,
``redelivery_limit``.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from config.keys import Bucket, KeySpace, Scope, as_text
from tasks.dlq_entry import (
    RAW_MAX_BYTES,
    REASONS,
    build_entry,
    fingerprint,
    iso_time,
    scope_of,
)
from tasks.dlq_scripts import (
    DEAD_LETTER_SCOPED,
    DEAD_LETTER_UNSCOPED,
    REMOVE,
    REPLAY_ABORT,
    REPLAY_BEGIN,
)
from tasks.dlq_selection import DlqStats, Selection, count_entries
from tasks.errors import ReplayRefused
from tasks.indexes import scored_range, total_members

__all__ = [
    "RAW_MAX_BYTES",
    "REASONS",
    "DeadLetterQueue",
    "Replayed",
    "iso_time",
    "scope_of",
]

#: Entries read per round trip when a filter needs their content.
PAGE = 500


@dataclass(frozen=True, slots=True)
class Replayed:
    """What replaying one entry did; the entry is gone from the DLQ in every case.

    ``outcome`` is ``replayed`` (published as ``task_id``), or why nothing had
    to be published: ``done`` (the key was delivered), ``in_flight``,
    ``queued`` (a copy is waiting, e.g. from an interrupted replay) or
    ``superseded`` (the key was dead-lettered again as ``newer_entry_id``).
    """

    entry_id: str
    outcome: str
    task_id: str | None = None
    newer_entry_id: str | None = None


class DeadLetterQueue:
    """List, inspect, replay and purge dead-lettered triggers."""

    def __init__(
        self,
        redis_client: redis.Redis,
        keys: KeySpace,
        *,
        ttl_s: int,
        raw_max_bytes: int = RAW_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.ttl_s = ttl_s
        self.raw_max_bytes = raw_max_bytes
        self._clock = clock
        self._scoped = redis_client.register_script(DEAD_LETTER_SCOPED)
        self._unscoped = redis_client.register_script(DEAD_LETTER_UNSCOPED)
        self._begin = redis_client.register_script(REPLAY_BEGIN)
        self._abort = redis_client.register_script(REPLAY_ABORT)
        self._remove = redis_client.register_script(REMOVE)

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
        """Build an entry (not yet stored) with the fields of DESIGN.md section 4.

        A ``raw`` body longer than ``raw_max_bytes`` (UTF-8) is cut there; the
        entry then says ``raw_truncated`` and the full size in ``raw_bytes``.
        """
        entry = build_entry(
            now=self._clock(),
            raw_max_bytes=self.raw_max_bytes,
            reason=reason,
            error=error,
            trigger=trigger,
            status_code=status_code,
            attempts=attempts,
            first_seen=first_seen,
            project_id=project_id,
            task_id=task_id,
            raw=raw,
        )
        entry["id"] = self.keys.entry_id(entry["id"], self._bucket(entry))
        return entry

    def _bucket(self, entry: dict[str, Any]) -> Bucket:
        """The bucket of an entry: its trigger's, when its campaign and key are known."""
        campaign, key = entry.get("campaign_id"), entry.get("idempotency_key")
        if isinstance(campaign, str) and isinstance(key, str):
            return self.keys.bucket_for(campaign, key)
        return self.keys.bucket(0)

    def add(self, entry: dict[str, Any], *, scope: Scope | None = None, owner: str = "") -> str:
        """Store ``entry``; return its id.

        With a ``scope``, mark the scope dead and drop ``owner``'s lease in the
        same step. Without one, the entry is stored once per fingerprint (its
        reason, task id, trigger and raw body): the id of an entry already
        stored for the same message is returned instead. Either way the
        trigger's pending record (if its campaign and key are known) is cleared
        in the same transaction.
        """
        encoded = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
        score = int(entry["id"].split("-", 1)[0])
        bucket = self._bucket(entry)
        if scope is not None:
            self._scoped(
                keys=[bucket.dlq_entries, bucket.dlq_index, *self.keys.scope_keys(scope)],
                args=[entry["id"], encoded, score, owner, self.ttl_s],
            )
            return str(entry["id"])
        keys = [bucket.dlq_entries, bucket.dlq_index, bucket.dlq_unscoped]
        campaign, key = entry.get("campaign_id"), entry.get("idempotency_key")
        if isinstance(campaign, str) and isinstance(key, str):
            keys += [self.keys.pending(campaign, key), bucket.pending_index]
        stored = self._unscoped(keys=keys, args=[entry["id"], encoded, score, fingerprint(entry)])
        return as_text(stored)

    def depth(self) -> int:
        """Number of entries."""
        return total_members(self.redis, [b.dlq_index for b in self.keys.buckets()])

    def ids(self, selection: Selection | None = None, limit: int | None = None) -> list[str]:
        """Ids of the selected entries, oldest first (every entry without a selection)."""
        selection = selection or Selection()
        if selection.reads_entries:
            return [str(e["id"]) for e in self.scan(selection, limit)]
        low, high = selection.score_bounds()
        found: list[tuple[float, str]] = []
        for bucket in self.keys.buckets():
            found += scored_range(self.redis, bucket.dlq_index, low, high, num=limit)
        found.sort()
        return [i for _, i in (found if limit is None else found[:limit])]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        """One entry, or ``None``."""
        raw = self.redis.hget(self.keys.bucket_of_entry(entry_id).dlq_entries, entry_id)
        return None if raw is None else dict(json.loads(raw))

    def get_many(self, entry_ids: list[str]) -> Iterator[dict[str, Any] | None]:
        """The entries of ``entry_ids`` in order (``None`` for one not there), a page at a time."""
        for start in range(0, len(entry_ids), PAGE):
            pipe = self.redis.pipeline(transaction=False)
            for entry_id in entry_ids[start : start + PAGE]:
                pipe.hget(self.keys.bucket_of_entry(entry_id).dlq_entries, entry_id)
            for raw in pipe.execute():
                yield None if raw is None else dict(json.loads(raw))

    def present(self, entry_ids: Iterable[str]) -> list[bool]:
        """Whether each of ``entry_ids`` is in the DLQ (one pipelined round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.hexists(self.keys.bucket_of_entry(entry_id).dlq_entries, entry_id)
        return [bool(found) for found in pipe.execute()]

    def entries(
        self, selection: Selection | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The selected entries, oldest first."""
        return list(self.scan(selection, limit))

    def scan(
        self, selection: Selection | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield the selected entries, oldest first, reading a page at a time.

        The index narrows by time; reason and campaign are matched on the
        entries read. With a ``limit`` and no content filter, exactly the
        entries shown are read.
        """
        selection = selection or Selection()
        page = PAGE if limit is None or selection.reads_entries else min(PAGE, limit)
        # each bucket's entries come oldest first: merged, so are all of them
        merged = heapq.merge(
            *(self._scan_bucket(b, selection, page) for b in self.keys.buckets()),
            key=lambda scored: scored[0],
        )
        if limit is not None and limit <= 0:
            return
        for found, (_, entry) in enumerate(merged, start=1):
            yield entry
            if limit is not None and found >= limit:
                return

    def _scan_bucket(
        self, bucket: Bucket, selection: Selection, page: int
    ) -> Iterator[tuple[float, dict[str, Any]]]:
        """One bucket's selected entries with their scores, oldest first, a page at a time."""
        low, high = selection.score_bounds()
        offset = 0
        while True:
            scored = scored_range(self.redis, bucket.dlq_index, low, high, start=offset, num=page)
            if not scored:
                return
            offset += len(scored)
            ids = [entry_id for _, entry_id in scored]
            for (score, _), raw in zip(
                scored, self.redis.hmget(bucket.dlq_entries, ids), strict=True
            ):
                if raw is None:  # removed since the index was read
                    continue
                entry = dict(json.loads(raw))
                if selection.matches(entry):
                    yield float(score), entry
            if len(scored) < page:
                return

    def stats(self, selection: Selection | None = None) -> DlqStats:
        """The selected entries counted by reason and campaign."""
        return count_entries(self.scan(selection))

    def replay(self, entry_id: str, publish: Callable[[dict[str, Any]], str]) -> Replayed:
        """Publish the entry's trigger again unless it is already back; remove the entry.

        ``publish`` validates and enqueues, returning the task id; when it
        raises (a trigger still invalid, a broker down) the entry stays, with
        its dead mark, and the error propagates. Safe to re-run after an
        interruption: a trigger already back in the pipeline is not published
        twice.
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
        scope = scope_of(entry)
        step = self._begin_replay(entry, scope)
        if step[0] == "missing":
            raise ReplayRefused(f"no DLQ entry with id {entry_id!r}")
        if step[0] != "publish":
            self._remove_entry(entry)
            newer = step[1] if step[0] == "superseded" else None
            return Replayed(entry_id, step[0], newer_entry_id=newer)
        try:
            task_id = publish(trigger)
        except BaseException:
            if scope is not None and step[1]:  # we cleared the mark: put it back
                pttl_ms = int(step[2]) if int(step[2]) > 0 else self.ttl_s * 1000
                self._abort(
                    keys=[*self.keys.scope_keys(scope)[:4], self._bucket(entry).dlq_replaying],
                    args=[entry_id, pttl_ms, step[1]],
                )
            raise
        self._remove_entry(entry)
        return Replayed(entry_id, "replayed", task_id=task_id)

    def purge(self, entry_ids: Iterable[str]) -> list[str]:
        """Remove the named entries, freeing their scope; return the ids that existed.

        The scope's delivery count is kept (see the module docstring).
        """
        removed = []
        for entry_id in entry_ids:
            entry = self.get(entry_id)
            if entry is not None and self._remove_entry(entry, clear_mark=True):
                removed.append(entry_id)
        return removed

    def _begin_replay(self, entry: dict[str, Any], scope: Scope | None) -> list[str]:
        bucket = self._bucket(entry)
        if scope is not None:
            keys = self.keys.scope_keys(scope)
            reply = self._begin(
                keys=[bucket.dlq_entries, *keys[:5], bucket.dlq_replaying],
                args=[entry["id"]],
            )
            return [as_text(part) for part in reply]
        # no project: no ledger state to consult, only the pending record
        pipe = self.redis.pipeline(transaction=False)
        pipe.hexists(bucket.dlq_entries, entry["id"])
        campaign, key = entry.get("campaign_id"), entry.get("idempotency_key")
        if isinstance(campaign, str) and isinstance(key, str):
            pipe.exists(self.keys.pending(campaign, key))
        exists, *pending = pipe.execute()
        if not exists:
            return ["missing"]
        return ["queued"] if pending and pending[0] else ["publish", "", ""]

    def _remove_entry(self, entry: dict[str, Any], *, clear_mark: bool = False) -> bool:
        bucket = self._bucket(entry)
        keys = [bucket.dlq_entries, bucket.dlq_index, bucket.dlq_unscoped, bucket.dlq_replaying]
        scope = scope_of(entry)
        if clear_mark and scope is not None:
            keys.append(self.keys.dead(scope))
        return bool(self._remove(keys=keys, args=[entry["id"], fingerprint(entry)]))
