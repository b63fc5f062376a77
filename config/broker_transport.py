"""The Redis broker's channel: one client per connection pool, and pushes that carry a write.

kombu's Redis channel, changed in two ways. The app names the transport in
``broker_transport`` (:func:`transport_for`, set by :mod:`config.celery_app`);
the broker URL is unchanged and other Celery apps in the process keep kombu's
channel. The app's connections (Celery's documented ``amqp`` class,
:class:`BrokerAMQP`) resolve our transport back to its URL scheme, so
``as_uri()`` still says ``redis://`` to the worker's banner and to Flower,
which picks its broker client by that scheme.

* **One client per connection pool.** kombu builds a new ``redis.Redis`` for
  every publish and every acknowledgement (``conn_or_acquire``). redis-py 8's
  constructor fills a table of about 170 response callbacks: about 170 µs of
  CPU on a 2-core machine, more than the localhost round trip it serves. A
  client is thread-safe (each command takes a connection from the pool), so
  the channel keeps one per pool. It builds a new one only when kombu
  replaces its pool, which happens after a connection error.
* **A push that carries a write.** Before a publish, a publisher may hand the
  message a :data:`PushWith` function (:func:`carry_with_push`, keyed by the
  message's correlation id, which Celery sets to the task id). The channel
  then calls it with its client, the list key and the serialised message, in
  place of its own LPUSH. :mod:`tasks.pending` uses this to write a pending
  record and push its message in one script: one round trip, atomic, when the
  broker is the store's Redis. kombu retries a failed publish through
  ``_put``; the carried function stays until a push succeeds, so a retry
  carries it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
from celery import Celery
from celery.app.amqp import AMQP
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

__all__ = [
    "BrokerAMQP",
    "BrokerConnection",
    "PushWith",
    "carried_push_left",
    "carries_pushes",
    "carry_with_push",
    "transport_for",
]

#: Pushes one message: ``(client, list key, serialised message)``; it must LPUSH it.
PushWith = Callable[[redis.Redis, str, str], None]

# (correlation id, push) of the next publish in this thread, greenlet or task
_carried: ContextVar[tuple[str, PushWith] | None] = ContextVar("clix_carried_push", default=None)


def carry_with_push(message_id: str, push: PushWith) -> None:
    """Let ``push`` do the LPUSH of the next publish of message ``message_id``.

    Only this module's channel honours it: check :func:`carries_pushes`
    first, and :func:`carried_push_left` after the publish (a producer made
    from a plain kombu connection publishes with kombu's own LPUSH).
    """
    _carried.set((message_id, push))


def carried_push_left(message_id: str) -> bool:
    """Whether the push carried for ``message_id`` went unused (forgetting it if so).

    Asked after a publish: true when the message went out through a channel
    that is not ours (a kombu connection made by hand), so its write did not
    happen and the publisher must do it now.
    """
    carried = _carried.get()
    if carried is None or carried[0] != message_id:
        return False
    _carried.set(None)
    return True


def carries_pushes(app: Celery) -> bool:
    """Whether ``app`` publishes through this module's channel (plain kombu would skip a push)."""
    conf = app.conf
    return conf.broker_transport in _SCHEMES and not (conf.broker_transport_options or {}).get(
        "global_keyprefix"
    )


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` of a broker URL: ours for Redis and Sentinel, else None."""
    scheme = broker_url.partition("://")[0]
    return next((path for path, ours in _SCHEMES.items() if ours == scheme), None)


class _ClientPerPool:
    """The changes to kombu's Redis channel (a mixin: plain and Sentinel channels)."""

    _pool_client: tuple[Any, redis.Redis] | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        """The caller's client, else this channel's client of its current pool."""
        if client:
            yield client
            return
        pool = self.pool  # type: ignore[attr-defined]
        held = self._pool_client
        if held is None or held[0] is not pool:
            # a race here builds two clients of one pool; either one is fine
            held = self._pool_client = (pool, self._create_client())  # type: ignore[attr-defined]
        yield held[1]

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        carried = _carried.get()
        if carried is None or carried[0] != message.get("properties", {}).get("correlation_id"):
            super()._put(queue, message, **kwargs)  # type: ignore[misc]
            return
        expiring = getattr(self, "_expires", None) or {}  # kombu >= 5.5
        if kwargs.get("_publish_batch") is not None or queue in expiring:
            # never configured by this project; a push without its write would lose it
            raise RuntimeError("a carried push cannot go through a publish batch or expiring queue")
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))  # type: ignore[attr-defined]
        with self.conn_or_acquire() as client:
            carried[1](client, key, dumps(message))  # type: ignore[no-untyped-call]
        _carried.set(None)


class Channel(_ClientPerPool, kombu_redis.Channel):
    """kombu's Redis channel with this module's changes."""


class SentinelChannel(_ClientPerPool, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with this module's changes."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


class TlsTransport(Transport):
    """:class:`Transport` for a ``rediss://`` URL (only its scheme in ``as_uri()`` differs)."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel


# our transports, as broker_transport names them, and the URL scheme each serves
_SCHEMES: dict[str, str] = {
    f"{__name__}:Transport": "redis",
    f"{__name__}:TlsTransport": "rediss",
    f"{__name__}:SentinelTransport": "sentinel",
}


class BrokerConnection(Connection):
    """kombu's connection; ``as_uri()`` and ``info()`` name our transports by their scheme."""

    # kombu's own is a plain class attribute too
    resolve_aliases = {**Connection.resolve_aliases, **_SCHEMES}  # noqa: RUF012


class BrokerAMQP(AMQP):  # type: ignore[misc]
    """Celery's broker glue, making :class:`BrokerConnection` connections."""

    Connection = BrokerConnection
    BrokerConnection = BrokerConnection  # Celery's compat alias
