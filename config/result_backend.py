"""The result backend of this project's app: Celery's, minus a subscription per publish.

Celery's Redis result backend subscribes to a task's result channel the moment
the task is published (``on_task_call``), whether or not the caller ever waits
for the result, and unsubscribes when the ``AsyncResult`` is collected: two
pub/sub commands per publish on a connection of their own, about a tenth of
what ``enqueue_trigger`` cost (celery/celery#3808, #4983). Producers of
triggers rarely wait: they enqueue and return.

:class:`ClixCelery` builds the backend Celery would build (from
``result_backend``) as a subclass that subscribes when somebody waits instead.
``AsyncResult.get()`` (and ``then``, ``join``...) still works unchanged: it
registers the result as pending, which subscribes to its channel, then reads
the stored result before waiting for the channel (Celery's redis
``ResultConsumer.on_wait_for_pending``), so a result stored before the wait
began is found by the read and one stored after by the channel. That is how
``AsyncResult(task_id).get()`` works in any process that did not publish the
task. ``ignore_result`` is left alone: the worker still stores every result.

The subscription and the read go over two connections, so Redis may run the
read before the ``SUBSCRIBE``: a result committed between them is neither read
nor received (Celery subscribes at publish time, long before the task can
finish, and never meets this). :class:`RereadingResultConsumer` closes the gap:
while somebody waits, it reads the stored results of the tasks waited for again
once a second (one ``MGET``), so such a result arrives a second late instead
of never.

Celery's Redis and Sentinel backends get the subclass; any other backend (an
application may configure its own) is built exactly as Celery builds it.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.app import backends
from celery.backends.redis import RedisBackend, ResultConsumer, SentinelBackend

__all__ = [
    "ClixCelery",
    "RereadingResultConsumer",
    "SubscribeOnWait",
    "SubscribeOnWaitRedisBackend",
    "SubscribeOnWaitSentinelBackend",
]


class RereadingResultConsumer(ResultConsumer):  # type: ignore[misc]
    """Celery's Redis result consumer, re-reading waited-for results once a second."""

    #: seconds between two re-reads of the stored results while somebody waits
    reread_interval_s = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reread_at = 0.0

    def drain_events(self, timeout: float | None = None) -> None:
        """Wait for result messages (Celery's), then re-read when a second has passed."""
        super().drain_events(timeout)
        now = time.monotonic()
        if self.subscribed_to and now >= self._reread_at:
            self._reread_at = now + self.reread_interval_s
            self.reread()

    def reread(self) -> None:
        """Read the stored results of every task waited for; deliver those that are there."""
        with self._locked():
            keys = list(self.subscribed_to)
            if not keys:
                return
            try:
                stored = self.backend.client.mget(keys)
            except self._connection_errors:
                return  # the next drain reconnects (Celery's own path) and reads them all
            for meta in stored:
                if meta:
                    self.on_state_change(self._decode_result(meta), None)


class SubscribeOnWait:
    """Mixin for a Redis result backend: publishing a task subscribes to nothing."""

    ResultConsumer = RereadingResultConsumer

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Celery calls this for every publish; waiting (``get``) subscribes instead."""
        return None


class SubscribeOnWaitRedisBackend(SubscribeOnWait, RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend (``redis://``, ``rediss://``), subscribing on a wait."""


class SubscribeOnWaitSentinelBackend(SubscribeOnWait, SentinelBackend):  # type: ignore[misc]
    """Celery's Sentinel result backend (``sentinel://``), subscribing on a wait."""


_SUBSCRIBE_ON_WAIT: dict[type, type] = {
    RedisBackend: SubscribeOnWaitRedisBackend,
    SentinelBackend: SubscribeOnWaitSentinelBackend,
}


class ClixCelery(Celery):  # type: ignore[misc]
    """This project's Celery app class: the result backend subscribes only on a wait."""

    def _get_backend(self) -> Any:
        # Celery's own resolution of ``result_backend`` (Celery._get_backend), then
        # the subclass; the configuration (and what code compares with it) is unchanged.
        backend_cls, url = backends.by_url(
            self.backend_cls or self.conf.result_backend, self.loader
        )
        backend_cls = _SUBSCRIBE_ON_WAIT.get(backend_cls, backend_cls)
        return backend_cls(app=self, url=url)
