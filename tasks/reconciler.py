"""The reconciler: re-publish triggers that stay pending because their message was lost.

One sweep (:meth:`Reconciler.sweep`) looks at up to ``batch`` pending records
older than the grace period, oldest first, and for each decides:

* done or dead-lettered in the ledger: the record is stale, forget it;
* in flight (a live lease), or its message sits unacknowledged with a worker:
  look again one grace period later;
* its message may still be waiting in the queue: leave it. The queue is FIFO,
  so a pending trigger can only still be queued if the *oldest* message in the
  queue was enqueued no later than it. A backlog of 100,000 triggers is never
  re-published: its pending records are all younger than the queue's head;
* otherwise the message is gone (popped by a worker killed before it recorded
  it, forgotten by a broker restarted without AOF, or never published): publish
  it again and restamp the record. The ledger makes a second copy harmless.

What "queued" and "unacknowledged" mean depends on the broker
(:class:`RedisBrokerView`, :class:`AmqpBrokerView`). Only one worker sweeps at
a time: a sweep first takes a short lease in Redis and keeps it until the
next interval. A sweep is bounded: ``batch`` records, a time budget of one
interval, at most ``MAX_UNACKED`` unacknowledged messages read (beyond that it
cannot tell, so it re-publishes nothing), and it never scans the keyspace (a
sorted-set range, no ``KEYS``).

Every time here is the store's clock (Redis ``TIME``): the records and message
headers are stamped with it by whoever publishes (:mod:`tasks.pending`), and the
cutoff is taken from it, so a producer or worker whose clock is off by minutes
neither makes queued triggers look lost nor hides lost ones. Stamps of
messages published back to back can still land in the queue slightly out of
order (two producers stamp, then publish); a message counts as possibly still
queued while the queue's head is less than ``PUBLISH_WINDOW_S`` younger than it.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from config.keys import KeySpace, Scope
from tasks.idempotency import IdempotencyStore
from tasks.pending import ENQUEUED_AT_HEADER, PendingLedger, PendingTrigger

__all__ = [
    "MAX_UNACKED",
    "PUBLISH_WINDOW_S",
    "AmqpBrokerView",
    "BrokerView",
    "Reconciler",
    "RedisBrokerView",
    "SweepReport",
]

logger = logging.getLogger("clix.reconciler")

#: Oldest queued message's enqueue time is unknown (a foreign producer's message).
UNKNOWN = -1

#: Longest time between stamping a record and its message reaching the queue
#: (a bulk batch is stamped once, then published message by message).
PUBLISH_WINDOW_S = 5.0

#: Most unacknowledged messages one sweep reads from a Redis broker.
MAX_UNACKED = 10_000

# KEYS: lease.  ARGV: owner, keep_ms.  Keep the lease until the next interval.
_KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class BrokerView(Protocol):
    """What the reconciler needs to know about the broker."""

    def oldest_enqueued_ms(self, queue: str) -> int | None:
        """Enqueue time of the oldest queued message; None if empty; UNKNOWN if unsure."""

    def unacknowledged(self) -> set[tuple[str, str]] | None:
        """(campaign_id, idempotency_key) of messages handed to workers, not yet acked.

        None when there are too many to read in one sweep (cannot tell).
        """


class RedisBrokerView:
    """kombu's Redis transport: a queue is a list (oldest at the right), unacked a hash."""

    def __init__(
        self, broker: redis.Redis, unacked_key: str = "unacked", max_unacked: int = MAX_UNACKED
    ) -> None:
        self.broker = broker
        self.unacked_key = unacked_key
        self.max_unacked = max_unacked

    def oldest_enqueued_ms(self, queue: str) -> int | None:
        raw = self.broker.lindex(queue, -1)  # kombu LPUSHes and BRPOPs: the head is last
        if raw is None:
            return None
        try:
            value = json.loads(raw)["headers"][ENQUEUED_AT_HEADER]
        except (ValueError, KeyError, TypeError):
            return UNKNOWN
        return int(value) if isinstance(value, int | float) else UNKNOWN

    def unacknowledged(self) -> set[tuple[str, str]] | None:
        # The hash holds every queue's unacked messages of this broker database:
        # read it in pages, and only when it is small enough for one sweep.
        if int(self.broker.hlen(self.unacked_key)) > self.max_unacked:
            return None
        found = set()
        for _tag, raw in self.broker.hscan_iter(self.unacked_key, count=500):
            try:
                message = json.loads(raw)[0]
                body = message["body"]
                if message["properties"].get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                kwargs = json.loads(body)[1]
                found.add((str(kwargs["campaign_id"]), str(kwargs["idempotency_key"])))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                continue  # not a trigger message
        return found


class AmqpBrokerView:
    """RabbitMQ: messages cannot be peeked; only an empty queue proves a message is gone.

    RabbitMQ requeues a dead consumer's unacknowledged messages itself and has no
    pop-before-record gap, so here the reconciler mostly covers failed publishes
    and broker data loss.
    """

    def __init__(self, message_count: Callable[[str], int]) -> None:
        self.message_count = message_count

    def oldest_enqueued_ms(self, queue: str) -> int | None:
        return None if self.message_count(queue) == 0 else UNKNOWN

    def unacknowledged(self) -> set[tuple[str, str]] | None:
        return set()


@dataclass
class SweepReport:
    """What one sweep did."""

    swept: bool = False
    republished: list[str] = field(default_factory=list)
    postponed: int = 0
    forgotten: int = 0
    waiting_in_queue: int = 0
    #: the broker had too many unacknowledged messages to read: nothing re-published
    unacked_unknown: bool = False
    #: the time budget ran out before every candidate was judged
    out_of_time: bool = False


class Reconciler:
    """Sweeps pending records of one project's fleet; build once per worker process."""

    def __init__(
        self,
        *,
        store: IdempotencyStore,
        pending: PendingLedger,
        broker: BrokerView,
        keys: KeySpace,
        project_id: str,
        queue: str,
        publish: Callable[[dict[str, Any], int], bool],
        owner: str,
        grace_s: float = 30.0,
        interval_s: float = 10.0,
        batch: int = 500,
        publish_window_s: float = PUBLISH_WINDOW_S,
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.pending = pending
        self.broker = broker
        self.keys = keys
        self.project_id = project_id
        self.queue = queue
        self.publish = publish
        self.owner = owner
        self.grace_ms = int(grace_s * 1000)
        self.interval_ms = int(interval_s * 1000)
        self.batch = batch
        self.publish_window_ms = int(publish_window_s * 1000)
        # None: the store's clock (Redis TIME), the one producers stamp with
        self._clock = clock
        self._monotonic = monotonic
        self._keep = store.redis.register_script(_KEEP)

    def now_ms(self) -> int:
        """The store's time in ms (or the test clock's)."""
        if self._clock is not None:
            return int(self._clock() * 1000)
        seconds, micros = self.store.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def sweep(self) -> SweepReport:
        """One bounded sweep, if no other worker is sweeping; see the module docstring."""
        report = SweepReport()
        lease = self.keys.reconciler_lease
        if not self.store.redis.set(lease, self.owner, nx=True, px=self.interval_ms * 3):
            return report
        report.swept = True
        try:
            self._sweep(report)
        finally:
            # hold the lease until the next interval: one sweep per interval, fleet-wide
            self._keep(keys=[lease], args=[self.owner, self.interval_ms])
        if report.republished:
            self.store.count("reconciled", len(report.republished))
            logger.warning(
                "reconciler re-published %d lost trigger(s): %s",
                len(report.republished),
                ", ".join(report.republished[:10]),
            )
        return report

    def _sweep(self, report: SweepReport) -> None:
        # within one interval, so the lease (three intervals) outlasts the sweep
        deadline = self._monotonic() + self.interval_ms / 1000
        now_ms = self.now_ms()
        candidates = self.pending.older_than(now_ms - self.grace_ms, self.batch)
        if not candidates:
            return
        oldest_queued = self.broker.oldest_enqueued_ms(self.queue)
        unacked = self.broker.unacknowledged()
        if unacked is None:
            report.unacked_unknown = True
            logger.warning(
                "reconciler: too many unacknowledged messages to read; nothing re-published"
            )
        for key in candidates:
            if self._monotonic() > deadline:
                report.out_of_time = True
                break
            record = self.pending.get(key)
            if record is None:  # expired, or cleared since the range was read
                self.pending.forget(key)
                report.forgotten += 1
                continue
            verdict = self._judge(record, oldest_queued, unacked)
            if verdict == "forget":
                self.pending.forget(key)
                report.forgotten += 1
            elif verdict == "postpone":
                self.pending.postpone(key, now_ms)
                report.postponed += 1
            elif verdict == "queued" or unacked is None:
                report.waiting_in_queue += 1
            else:
                stamp = self.now_ms()
                if not self.publish(record.kwargs, stamp):
                    continue  # refused (dead-lettered instead): no longer pending
                self.pending.requeued(record, stamp)
                report.republished.append(
                    f"{record.kwargs['campaign_id']}/{record.kwargs['idempotency_key']}"
                )

    def _judge(
        self,
        record: PendingTrigger,
        oldest_queued: int | None,
        unacked: set[tuple[str, str]] | None,
    ) -> str:
        campaign, key = record.kwargs["campaign_id"], record.kwargs["idempotency_key"]
        status = self.store.status(Scope(self.project_id, campaign, key))
        if status.state == "done" or status.dead_entry_id:
            return "forget"
        if status.state == "in_flight" or (unacked is not None and (campaign, key) in unacked):
            return "postpone"
        if oldest_queued is not None and (
            oldest_queued == UNKNOWN
            or oldest_queued <= record.enqueued_at_ms + self.publish_window_ms
        ):
            return "queued"
        return "republish"
