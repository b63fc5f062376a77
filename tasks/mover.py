"""The schedule mover: publish each scheduled trigger when it is due.

Every worker's main process runs one (:mod:`worker.scheduling`) and calls
:meth:`Mover.tick` again after :meth:`Mover.pause_s`: at the next due time
when it is near, else after ``CLIX_SCHEDULE_TICK_S`` (default 0.5 s), never
sooner than ``MIN_PAUSE_S``. A trigger is taken at its due time when it was
scheduled at least one tick ahead, at most one tick late otherwise; an idle
fleet costs the store two small scripts per second per worker and bucket of the
key layout (one bucket on a plain Redis, see :mod:`config.keys`). Movers need no leader: each
take (:meth:`tasks.schedule.ScheduleStore.take`) is atomic and leases the
records it returns, so workers share the due triggers and a killed worker's
share is taken again by the others after ``retake_ms``.

One tick is bounded: at most ``max_batches`` takes of ``batch`` records per bucket (100,000
triggers due at once are moved a few thousand per tick, oldest first, by every
worker), and it never scans the keyspace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tasks.schedule import Due, ScheduleStore

__all__ = ["MoveReport", "Mover"]

logger = logging.getLogger("clix.scheduler")

#: ``publish(kwargs, task_id, enqueued_at_ms)``: True when published, False when
#: refused for good (the trigger went to the DLQ instead); raises on broker trouble.
Publish = Callable[[dict[str, Any], str, int], bool]


@dataclass
class MoveReport:
    """What one tick did."""

    #: the store's time at the last take (ms)
    now_ms: int = 0
    published: int = 0
    refused: int = 0
    #: due triggers published this long after their time (ms), for logs and tests
    late_ms: list[int] = field(default_factory=list)


#: Shortest pause between two ticks: triggers due close together go in one take.
MIN_PAUSE_S = 0.02


class Mover:
    """Publishes due scheduled triggers; build once per worker, call :meth:`tick` often."""

    def __init__(
        self,
        schedule: ScheduleStore,
        publish: Publish,
        *,
        batch: int = 200,
        retake_ms: int = 3_000,
        max_batches: int = 10,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.schedule = schedule
        self.publish = publish
        self.batch = batch
        self.retake_ms = retake_ms
        self.max_batches = max_batches
        # None: the store's clock (Redis TIME, read by the take itself); a
        # function (ms): tests that move time by hand
        self._clock = clock

    def pause_s(self, now_ms: int, tick_s: float) -> float:
        """How long to wait before the next tick: until the next due time, at most ``tick_s``."""
        next_due = self.schedule.next_due_ms
        if next_due is None:
            return tick_s
        return min(tick_s, max(MIN_PAUSE_S, (next_due - now_ms) / 1000))

    def tick(self) -> MoveReport:
        """Take and publish due triggers until none is left or the bound is reached."""
        report = MoveReport()
        for _ in range(self.max_batches):
            now_ms, due = self.schedule.take(
                self.batch, self.retake_ms, None if self._clock is None else self._clock()
            )
            report.now_ms = now_ms
            if not due:
                break
            self._publish_all(now_ms, due, report)
            if not self.schedule.full:
                break
        return report

    def _publish_all(self, now_ms: int, due: list[Due], report: MoveReport) -> None:
        done: list[str] = []
        try:
            for item in due:
                if self.publish(item.kwargs, item.task_id, now_ms):
                    report.published += 1
                    report.late_ms.append(now_ms - item.send_at_ms)
                else:
                    report.refused += 1
                done.append(item.key)
        finally:
            # what was published is finished even when the broker failed midway;
            # the rest is taken again after retake_ms
            self.schedule.finish(done)
        if report.late_ms and max(report.late_ms) > 1000:
            logger.warning(
                "published %d scheduled triggers, the latest %d ms after its time",
                len(done),
                max(report.late_ms),
            )
