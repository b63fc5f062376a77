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

Celery's Redis and Sentinel backends get the subclass; any other backend (an
application may configure its own) is built exactly as Celery builds it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app import backends
from celery.backends.redis import RedisBackend, SentinelBackend

__all__ = [
    "ClixCelery",
    "SubscribeOnWait",
    "SubscribeOnWaitRedisBackend",
    "SubscribeOnWaitSentinelBackend",
]


class SubscribeOnWait:
    """Mixin for a Redis result backend: publishing a task subscribes to nothing."""

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
