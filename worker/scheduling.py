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
from collections.abc import Callable
from typing import Any

from config.keys import KeySpace
from config.settings import Settings, get_settings
from tasks import context
from tasks.errors import InvalidTrigger
from tasks.mover import Mover
from tasks.schedule import ScheduleStore
from worker.background import BackgroundLoop, BackgroundStep
from worker.reconciliation import _Publisher

__all__ = ["MoverThread", "Scheduling", "build_mover"]

logger = logging.getLogger("clix.scheduler")


def build_mover(settings: Settings, publisher: _Publisher) -> Mover:
    """A mover with a Redis connection of its own, publishing through ``trigger_campaign``."""
    from tasks.trigger import trigger_campaign

    conn = context.redis_client(settings)
    keys = KeySpace.of(settings)
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


class MoverThread(BackgroundLoop[Mover]):
    """Moves due triggers until stopped: at due times, at least every ``tick_s``."""

    def __init__(
        self,
        build: Callable[[], Mover],
        tick_s: float,
        on_exit: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(
            "clix-scheduler",
            build,
            self._tick,
            tick_s,
            close=lambda mover: mover.schedule.redis.close(),
            on_exit=on_exit,
            logger=logger,
            what="moving scheduled triggers",
        )

    def _tick(self, mover: Mover) -> float:
        report = mover.tick()
        return mover.pause_s(report.now_ms, self.pause_s)


class Scheduling(BackgroundStep):
    """Move due scheduled triggers with the consumer, in a thread of its own."""

    def make_loop(self) -> MoverThread:
        """A mover thread publishing over a broker connection of its own."""
        settings = get_settings()
        publisher = _Publisher()
        return MoverThread(
            lambda: build_mover(settings, publisher),
            settings.clix_schedule_tick_s,
            on_exit=publisher.close,
        )
