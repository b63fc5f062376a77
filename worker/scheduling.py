"""Run the schedule mover inside every worker: scheduled triggers need no extra process.

A consumer bootstep in each worker's main process starts a
:class:`MoverThread` that calls :meth:`tasks.mover.Mover.tick` at each due
time, at least every ``CLIX_SCHEDULE_TICK_S``, in a thread of its own with its own Redis and broker
connections (never in the consumer's event loop), like the reconciler
(:mod:`worker.reconciliation`). Every worker moves: the take is atomic and
leased per trigger, so a killed worker stops nobody.

The step also registers the worker's project id in the fleet's project set,
so ``cancel`` and ``status`` can look at the ledger of every project the fleet
sends for without being told the project.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from config.keys import KeySpace
from config.settings import Settings, get_settings
from tasks import context
from tasks.errors import InvalidTrigger
from tasks.mover import Mover
from tasks.schedule import ScheduleStore
from worker.reconciliation import _Publisher

__all__ = ["MoverThread", "Scheduling", "build_mover"]

logger = logging.getLogger("clix.scheduler")

#: How long a stopping worker waits for a tick in progress.
STOP_TIMEOUT_S = 5.0


def build_mover(settings: Settings, publisher: _Publisher) -> Mover:
    """A mover with a Redis connection of its own, publishing through ``trigger_campaign``."""
    from tasks.trigger import trigger_campaign

    conn = context.redis_client(settings)
    keys = KeySpace(settings.clix_key_prefix)
    if settings.clix_project_id:
        conn.sadd(keys.projects, settings.clix_project_id)
    dlq = context.dead_letter_queue(settings, conn)

    def publish(kwargs: dict[str, Any], task_id: str, enqueued_at_ms: int) -> bool:
        try:
            trigger_campaign.apply_async(
                kwargs=kwargs,
                task_id=task_id,
                producer=publisher.producer(),
                clix_enqueued_at_ms=enqueued_at_ms,
            )
        except InvalidTrigger as exc:  # scheduled under older request rules: keep it, in the DLQ
            entry = dlq.new_entry(
                reason="invalid_payload",
                error=str(exc),
                trigger=kwargs,
                project_id=settings.clix_project_id,
            )
            dlq.add(entry)
            return False
        except Exception:
            publisher.close()  # a fresh connection next time
            raise
        return True

    return Mover(
        ScheduleStore(conn, keys, ttl_s=settings.clix_idempotency_ttl_s),
        publish,
        batch=settings.clix_schedule_batch,
        retake_ms=int(settings.clix_schedule_retake_s * 1000),
    )


class MoverThread(threading.Thread):
    """Ticks every ``tick_s`` until stopped; errors are logged, the next tick retries."""

    def __init__(
        self,
        build: Callable[[], Mover],
        tick_s: float,
        on_exit: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(name="clix-scheduler", daemon=True)
        self._build = build
        self._on_exit = on_exit
        self.tick_s = tick_s
        self._stopping = threading.Event()
        self.ticks = 0

    def run(self) -> None:
        """Build the mover here (its connections belong to this thread), then tick."""
        mover: Mover | None = None
        failures = 0
        pause_s = self.tick_s
        try:
            while not self._stopping.wait(pause_s):
                pause_s = self.tick_s
                try:
                    if mover is None:
                        mover = self._build()
                    report = mover.tick()
                    pause_s = mover.pause_s(report.now_ms, self.tick_s)
                    failures = 0
                except Exception:  # Redis or broker trouble: the next tick tries again
                    failures += 1
                    if failures == 1 or failures % 100 == 0:  # not a line every tick
                        logger.warning("moving scheduled triggers failed", exc_info=True)
                self.ticks += 1
        finally:
            if mover is not None:
                mover.schedule.redis.close()
            self._on_exit()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop after the tick in progress (if any); wait at most ``timeout_s``."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout_s)


class Scheduling(bootsteps.StartStopStep):  # type: ignore[misc]
    """Start the mover thread with the consumer; stop it with the consumer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: MoverThread | None = None

    def start(self, parent: Any) -> None:
        """Begin moving (in a thread of its own)."""
        settings = get_settings()
        publisher = _Publisher()
        self.thread = MoverThread(
            lambda: build_mover(settings, publisher),
            settings.clix_schedule_tick_s,
            on_exit=publisher.close,
        )
        self.thread.start()

    def stop(self, parent: Any) -> None:
        """Stop moving."""
        if self.thread is not None:
            self.thread.stop()
            self.thread = None
