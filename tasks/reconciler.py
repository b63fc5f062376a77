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
next interval; the sweep is bounded (``batch`` records) and never scans the
keyspace (a sorted-set range, no ``KEYS``).
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

__all__ = ["AmqpBrokerView", "BrokerView", "Reconciler", "RedisBrokerView", "SweepReport"]

logger = logging.getLogger("clix.reconciler")

#: Oldest queued message's enqueue time is unknown (a foreign producer's message).
UNKNOWN = -1

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

    def unacknowledged(self) -> set[tuple[str, str]]:
        """(campaign_id, idempotency_key) of messages handed to workers, not yet acked."""


class RedisBrokerView:
    """kombu's Redis transport: a queue is a list (oldest at the right), unacked a hash."""

    def __init__(self, broker: redis.Redis, unacked_key: str = "unacked") -> None:
        self.broker = broker
        self.unacked_key = unacked_key

    def oldest_enqueued_ms(self, queue: str) -> int | None:
        raw = self.broker.lindex(queue, -1)  # kombu LPUSHes and BRPOPs: the head is last
        if raw is None:
            return None
        try:
            value = json.loads(raw)["headers"][ENQUEUED_AT_HEADER]
        except (ValueError, KeyError, TypeError):
            return UNKNOWN
        return int(value) if isinstance(value, int | float) else UNKNOWN

    def unacknowledged(self) -> set[tuple[str, str]]:
        found = set()
        for raw in self.broker.hvals(self.unacked_key):
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

    def unacknowledged(self) -> set[tuple[str, str]]:
        return set()


@dataclass
class SweepReport:
    """What one sweep did."""

    swept: bool = False
    republished: list[str] = field(default_factory=list)
    postponed: int = 0
    forgotten: int = 0
    waiting_in_queue: int = 0


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
        clock: Callable[[], float] = time.time,
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
        self._clock = clock
        self._keep = store.redis.register_script(_KEEP)

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
        now_ms = int(self._clock() * 1000)
        candidates = self.pending.older_than(now_ms - self.grace_ms, self.batch)
        if not candidates:
            return
        oldest_queued = self.broker.oldest_enqueued_ms(self.queue)
        unacked = self.broker.unacknowledged()
        for key in candidates:
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
            elif verdict == "queued":
                report.waiting_in_queue += 1
            else:
                stamp = int(self._clock() * 1000)
                if not self.publish(record.kwargs, stamp):
                    continue  # refused (dead-lettered instead): no longer pending
                self.pending.requeued(record, stamp)
                report.republished.append(
                    f"{record.kwargs['campaign_id']}/{record.kwargs['idempotency_key']}"
                )

    def _judge(
        self, record: PendingTrigger, oldest_queued: int | None, unacked: set[tuple[str, str]]
    ) -> str:
        campaign, key = record.kwargs["campaign_id"], record.kwargs["idempotency_key"]
        status = self.store.status(Scope(self.project_id, campaign, key))
        if status.state == "done" or status.dead_entry_id:
            return "forget"
        if status.state == "in_flight" or (campaign, key) in unacked:
            return "postpone"
        if oldest_queued is not None and (
            oldest_queued == UNKNOWN or oldest_queued <= record.enqueued_at_ms
        ):
            return "queued"
        return "republish"
