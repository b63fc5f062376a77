"""Run the reconciler inside the worker fleet: no separate process to deploy.

A consumer bootstep in each worker's main process calls
:meth:`tasks.reconciler.Reconciler.sweep` every ``CLIX_RECONCILE_INTERVAL_S``;
the sweep's lease in Redis makes sure one worker of the fleet sweeps at a time.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import redis
from celery import bootsteps

from config.celery_app import app
from config.keys import KeySpace
from config.settings import Settings, get_settings
from tasks.context import WorkerContext, current
from tasks.errors import InvalidTrigger
from tasks.reconciler import AmqpBrokerView, BrokerView, Reconciler, RedisBrokerView

__all__ = ["Reconciliation", "build_reconciler"]

logger = logging.getLogger("clix.reconciler")


def broker_view(settings: Settings) -> BrokerView:
    """How the reconciler looks into the configured broker."""
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBrokerView(redis.Redis.from_url(settings.broker_url, socket_timeout=10))

    def message_count(queue: str) -> int:
        with app.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(queue, passive=True).message_count)

    return AmqpBrokerView(message_count)


def build_reconciler(ctx: WorkerContext) -> Reconciler:
    """A reconciler publishing through the ``trigger_campaign`` task of this process."""
    from tasks.trigger import trigger_campaign

    settings = ctx.settings

    def publish(kwargs: dict[str, Any], enqueued_at_ms: int) -> bool:
        try:
            trigger_campaign.apply_async(kwargs=kwargs, clix_enqueued_at_ms=enqueued_at_ms)
        except InvalidTrigger as exc:  # stored under older request rules: keep it, in the DLQ
            entry = ctx.dlq.new_entry(
                reason="invalid_payload",
                error=str(exc),
                trigger=kwargs,
                project_id=settings.clix_project_id,
            )
            ctx.dlq.add(entry)
            return False
        return True

    return Reconciler(
        store=ctx.store,
        pending=ctx.pending,
        broker=broker_view(settings),
        keys=KeySpace(settings.clix_key_prefix),
        project_id=str(settings.clix_project_id),
        queue=settings.clix_queue,
        publish=publish,
        owner=f"{socket.gethostname()}:{os.getpid()}",
        grace_s=settings.clix_reconcile_grace_s,
        interval_s=settings.clix_reconcile_interval_s,
        batch=settings.clix_reconcile_batch,
    )


class Reconciliation(bootsteps.StartStopStep):  # type: ignore[misc]
    """Sweep pending triggers on a timer in the worker's main process."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.reconciler: Reconciler | None = None
        self.timer: Any = None

    def start(self, parent: Any) -> None:
        """Begin sweeping."""
        self.reconciler = build_reconciler(current())
        interval = get_settings().clix_reconcile_interval_s
        self.timer = parent.timer.call_repeatedly(interval, self.tick)

    def stop(self, parent: Any) -> None:
        """Stop sweeping."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def tick(self) -> None:
        """One sweep; errors are logged and the next tick tries again."""
        assert self.reconciler is not None
        try:
            self.reconciler.sweep()
        except Exception:  # Redis or broker trouble: the next tick tries again
            logger.warning("reconciler sweep failed", exc_info=True)
