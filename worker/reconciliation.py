"""Run the reconciler inside the worker fleet: no separate process to deploy.

A consumer bootstep in each worker's main process starts a
:class:`ReconcilerThread` that calls :meth:`tasks.reconciler.Reconciler.sweep`
every ``CLIX_RECONCILE_INTERVAL_S``; the sweep's lease in Redis makes sure one
worker of the fleet sweeps at a time. The sweep runs in its own thread, with
its own Redis connections and its own broker connection, never in the
consumer's event loop: reading the store and the broker cannot delay the
consumer, its acknowledgements or its heartbeats. Each sweep is bounded (see
:mod:`tasks.reconciler`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Producer

from config.celery_app import app
from config.connections import broker_is_redis, broker_redis_client
from config.keys import KeySpace
from config.settings import Settings, get_settings
from tasks import context
from tasks.errors import InvalidTrigger
from tasks.pending import PendingLedger
from tasks.reconciler import AmqpBrokerView, BrokerView, Reconciler, RedisBrokerView
from worker.background import BackgroundLoop, BackgroundStep

__all__ = ["ReconcilerThread", "Reconciliation", "build_reconciler"]

logger = logging.getLogger("clix.reconciler")


def broker_view(settings: Settings) -> BrokerView:
    """How the reconciler looks into the configured broker."""
    if broker_is_redis(settings):
        return RedisBrokerView(broker_redis_client(settings))

    def message_count(queue: str) -> int:
        with app.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(queue, passive=True).message_count)

    return AmqpBrokerView(message_count)


class _Publisher:
    """Publishes re-published triggers over a broker connection of its own."""

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._producer: Producer | None = None

    def producer(self) -> Producer:
        if self._producer is None:
            self._conn = app.connection_for_write()
            self._producer = self._conn.Producer()
        return self._producer

    def close(self) -> None:
        """Drop the connection (after an error, and at the end)."""
        if self._conn is not None:
            self._conn.release()  # type: ignore[no-untyped-call]
        self._conn, self._producer = None, None


def build_reconciler(settings: Settings, publisher: _Publisher | None = None) -> Reconciler:
    """A reconciler with Redis connections of its own, publishing through ``trigger_campaign``."""
    from tasks.trigger import trigger_campaign

    own = publisher if publisher is not None else _Publisher()
    conn = context.redis_client(settings)
    keys = KeySpace.of(settings)
    store = context.idempotency_store(settings, conn)
    dlq = context.dead_letter_queue(settings, conn)

    def publish(kwargs: dict[str, Any], enqueued_at_ms: int) -> bool:
        try:
            trigger_campaign.apply_async(
                kwargs=kwargs, producer=own.producer(), clix_enqueued_at_ms=enqueued_at_ms
            )
        except InvalidTrigger as exc:  # stored under older request rules: keep it, in the DLQ
            entry = dlq.new_entry(
                reason="invalid_payload",
                error=str(exc),
                trigger=kwargs,
                project_id=settings.clix_project_id,
            )
            dlq.add(entry)
            return False
        except Exception:
            own.close()  # a fresh connection next time
            raise
        return True

    return Reconciler(
        store=store,
        pending=PendingLedger(conn, keys, ttl_s=settings.clix_idempotency_ttl_s),
        broker=broker_view(settings),
        keys=keys,
        project_id=str(settings.clix_project_id),
        queue=settings.clix_queue,
        publish=publish,
        owner=f"{socket.gethostname()}:{os.getpid()}",
        grace_s=settings.clix_reconcile_grace_s,
        interval_s=settings.clix_reconcile_interval_s,
        batch=settings.clix_reconcile_batch,
    )


class ReconcilerThread(BackgroundLoop[Reconciler]):
    """Sweeps every ``interval_s`` until stopped; a failed sweep is logged and tried again."""

    def __init__(
        self,
        build: Callable[[], Reconciler],
        interval_s: float,
        on_exit: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(
            "clix-reconciler",
            build,
            self._sweep,
            interval_s,
            close=lambda reconciler: reconciler.store.redis.close(),
            on_exit=on_exit,
            logger=logger,
            what="reconciler sweep",
        )

    def _sweep(self, reconciler: Reconciler) -> float:
        reconciler.sweep()
        return self.pause_s


class Reconciliation(BackgroundStep):
    """Sweep pending triggers with the consumer, in a thread of its own."""

    def make_loop(self) -> ReconcilerThread:
        """A reconciler thread publishing over a broker connection of its own."""
        settings = get_settings()
        publisher = _Publisher()
        return ReconcilerThread(
            lambda: build_reconciler(settings, publisher),
            settings.clix_reconcile_interval_s,
            on_exit=publisher.close,
        )
