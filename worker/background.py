"""Work a worker's main process does beside consuming: a loop in a thread of its own.

The reconciler's sweep and the schedule's mover each run as a
:class:`BackgroundLoop`: the thread builds its object (so its Redis and broker
connections belong to that thread, never to the consumer's event loop), runs
one step at a time and waits the pause the step asks for. A failed step is
logged (the first of a run of failures, then every 100th) and tried again
after the pause; :meth:`BackgroundLoop.stop` lets the step in progress finish.
A :class:`BackgroundStep` starts its loop with the consumer and stops it with
the consumer (a lost broker connection restarts both).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from celery import bootsteps

__all__ = ["STOP_TIMEOUT_S", "BackgroundLoop", "BackgroundStep"]

#: How long a stopping worker waits for a step in progress.
STOP_TIMEOUT_S = 5.0

T = TypeVar("T")


class BackgroundLoop(threading.Thread, Generic[T]):
    """Runs ``step`` on what ``build`` made until stopped; ``step`` returns the next pause."""

    def __init__(
        self,
        name: str,
        build: Callable[[], T],
        step: Callable[[T], float],
        pause_s: float,
        *,
        close: Callable[[T], None],
        on_exit: Callable[[], None],
        logger: logging.Logger,
        what: str,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._build = build
        self._step = step
        self._close = close
        self._on_exit = on_exit
        self._logger = logger
        self._what = what
        self.pause_s = pause_s
        self._stopping = threading.Event()
        self.steps = 0

    def run(self) -> None:
        """Build here (the connections belong to this thread), then step until stopped."""
        made: T | None = None
        failures = 0
        pause_s = self.pause_s
        try:
            while not self._stopping.wait(pause_s):
                pause_s = self.pause_s
                try:
                    if made is None:
                        made = self._build()
                    pause_s = self._step(made)
                    failures = 0
                except Exception:  # Redis or broker trouble: the next step tries again
                    failures += 1
                    if failures == 1 or failures % 100 == 0:  # not a line every step
                        self._logger.warning("%s failed", self._what, exc_info=True)
                self.steps += 1
        finally:
            if made is not None:
                self._close(made)
            self._on_exit()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop after the step in progress (if any); wait at most ``timeout_s``."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout_s)


class BackgroundStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer bootstep running one :class:`BackgroundLoop`; subclasses say which."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: BackgroundLoop[Any] | None = None

    def make_loop(self) -> BackgroundLoop[Any]:
        """The loop to run (built anew each time the consumer starts)."""
        raise NotImplementedError

    def start(self, parent: Any) -> None:
        """Begin the loop, in a thread of its own."""
        self.thread = self.make_loop()
        self.thread.start()

    def stop(self, parent: Any) -> None:
        """Stop the loop."""
        if self.thread is not None:
            self.thread.stop()
            self.thread = None
