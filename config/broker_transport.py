"""The Redis broker's channel: one client per connection pool, and pushes that carry a write.

kombu's Redis channel, changed in two ways. The app names the transport in
``broker_transport`` (:func:`transport_for`, set by :mod:`config.celery_app`);
the broker URL is unchanged and other Celery apps in the process keep kombu's
channel. Our transports are registered with kombu's connection as aliases of
their URL scheme, so ``as_uri()`` still says ``redis://`` to the worker's
banner and to Flower, which picks its broker client by that scheme.

* **One client per connection pool.** kombu builds a new ``redis.Redis`` for
  every publish and every acknowledgement (``conn_or_acquire``). redis-py 8's
  constructor fills a table of about 170 response callbacks: about 170 µs of
  CPU on a 2-core machine, more than the localhost round trip it serves. A
  client is thread-safe (each command takes a connection from the pool), so
  the channel keeps one per pool. It builds a new one only when kombu
  replaces its pool, which happens after a connection error.
* **A push that carries a write.** Before a publish, a publisher may hand the
  message a :class:`CarriedWrite` (:func:`carry`, keyed by the message's
  correlation id, which Celery sets to the task id). The channel then lets
  it push the serialised message in place of its own LPUSH.
  :mod:`tasks.pending` uses this to write a pending record and push its
  message in one script: one round trip, atomic, when the broker is the
  store's Redis. A publish into a kombu publish batch, or to a queue with an
  expiry, gets the write on its own first and kombu's push after it. kombu
  retries a failed publish through ``_put``: a carried write stays until a
  push succeeds, so a retry carries it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import redis
from celery import Celery
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

__all__ = [
    "CarriedWrite",
    "carried_write_left",
    "carries_pushes",
    "carry",
    "transport_for",
]


class CarriedWrite(Protocol):
    """A write that goes to the broker's Redis with a message's publish."""

    def with_push(self, client: redis.Redis, queue_key: str, message: str) -> None:
        """Do the write and LPUSH ``message`` onto ``queue_key``, in that order."""

    def alone(self, client: redis.Redis) -> None:
        """Do the write only (kombu pushes the message afterwards)."""


# writes carried by the publishes of this thread, greenlet or task, by message id;
# replaced, never changed in place: a context copied from this one keeps its own
_carried: ContextVar[dict[str, CarriedWrite]] = ContextVar("clix_carried_writes")


#: Carried writes kept per context at most: a publish that failed leaves its
#: write behind (a publisher that sees the failure forgets it); the oldest go.
MAX_CARRIED = 64


def carry(message_id: str, write: CarriedWrite) -> None:
    """Have the publish of message ``message_id`` do ``write`` with its push.

    Only this module's channel honours it: check :func:`carries_pushes`
    first, and :func:`carried_write_left` after the publish (a producer made
    from a plain kombu connection publishes with kombu's own LPUSH).
    """
    carried = {**_carried.get({}), message_id: write}
    while len(carried) > MAX_CARRIED:
        del carried[next(iter(carried))]
    _carried.set(carried)


def carried_write_left(message_id: str) -> CarriedWrite | None:
    """The write carried for ``message_id`` if its publish did not do it; forgotten now.

    Asked after a publish: not None when the message went out through a
    channel that is not ours (a kombu connection made by hand), or when the
    publish failed; the publisher decides what to do with it.
    """
    return _take(message_id)


def _take(message_id: str) -> CarriedWrite | None:
    carried = _carried.get({})
    if message_id not in carried:
        return None
    _carried.set({k: v for k, v in carried.items() if k != message_id})
    return carried[message_id]


def carries_pushes(app: Celery) -> bool:
    """Whether ``app`` publishes through this module's channel (plain kombu would skip a write)."""
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
        message_id = message.get("properties", {}).get("correlation_id")
        write = _carried.get({}).get(message_id) if message_id else None
        if write is None:
            super()._put(queue, message, **kwargs)  # type: ignore[misc]
            return
        expiring = getattr(self, "_expires", None) or {}  # kombu >= 5.5
        with self.conn_or_acquire() as client:
            if kwargs.get("_publish_batch") is not None or queue in expiring:
                # kombu's own push (buffered, or with its expiry): the write goes first
                write.alone(client)
                _take(message_id)
                super()._put(queue, message, **kwargs)  # type: ignore[misc]
                return
            key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))  # type: ignore[attr-defined]
            write.with_push(client, key, dumps(message))  # type: ignore[no-untyped-call]
        _take(message_id)


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

# kombu names a connection's transport by these aliases in as_uri() and info()
# (what the worker's banner, `celery report` and Flower read): new names only,
# kombu's own entries are untouched
Connection.resolve_aliases.update(_SCHEMES)
