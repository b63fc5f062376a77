"""Pause and resume consuming with the fleet-wide circuit breaker.

A consumer bootstep in each worker's main process reads the breaker once per
``CHECK_INTERVAL_S``. While it is open the worker cancels its consumer of the
trigger queue: messages stay in the broker untouched (not fetched, not retried,
not dead-lettered) and the deliveries already running finish or go back to the
queue. When the probe time comes (half-open) or the breaker closes, it consumes
again; one delivery fleet-wide then holds the probe token and sends.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from tasks.breaker import CircuitBreaker
from tasks.context import current

__all__ = ["CHECK_INTERVAL_S", "BreakerConsumption"]

logger = logging.getLogger("clix.consumption")

#: How often a worker reads the breaker; also how long an open breaker takes to
#: stop a worker that did not trip it itself.
CHECK_INTERVAL_S = 1.0


class BreakerConsumption(bootsteps.StartStopStep):  # type: ignore[misc]
    """Cancel the trigger queue's consumer while the breaker is open; add it back after."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.breaker: CircuitBreaker | None = None
        self.paused = False
        self.timer: Any = None

    def start(self, parent: Any) -> None:
        """Begin watching the breaker."""
        ctx = current()  # the main process's context, shared with the consumer
        self.queue = ctx.settings.clix_queue
        self.breaker = ctx.breaker
        self.timer = parent.timer.call_repeatedly(CHECK_INTERVAL_S, self.check, (parent,))

    def stop(self, parent: Any) -> None:
        """Stop watching (the consumer is going away anyway)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def check(self, parent: Any) -> None:
        """One look at the breaker; pause or resume the trigger queue's consumer."""
        assert self.breaker is not None
        try:
            state = self.breaker.state()
        except Exception:  # Redis trouble: keep the current mode and look again
            logger.warning("could not read the circuit breaker", exc_info=True)
            return
        if not state.consuming and not self.paused:
            logger.error(
                "circuit breaker open (%s): pausing consumption of %s; next probe in %.0f s",
                state.reason,
                self.queue,
                state.probe_in_s or 0,
            )
            parent.cancel_task_queue(self.queue)
            self.paused = True
        elif state.consuming and self.paused:
            logger.warning(
                "circuit breaker %s: consuming %s again", state.state.replace("_", "-"), self.queue
            )
            parent.add_task_queue(self.queue)
            self.paused = False
