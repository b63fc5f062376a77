"""The gauges a Prometheus scrape reads from Redis state; tasks never update them.

What a scrape reads (:class:`RedisStateCollector`, registered by :mod:`worker.metrics`)::

    clix_dlq_depth                  entries in the dead-letter queue
    clix_breaker_state{reason}      0 closed, 1 half-open, 2 open; reason auth/outage/none
    clix_queue_depth                messages waiting in the trigger queue (broker)
    clix_unacked_messages           Redis broker: messages handed out, not yet acknowledged
    clix_redis_up                   1 when the store's Redis answered this scrape

The counters deliveries update are in :mod:`tasks.metrics`. Labels come from
small fixed sets only (:data:`BREAKER_REASONS`): any other value becomes
``"other"``. A scrape never raises: what cannot be read is left out of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from kombu.connection import Connection
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config.connections import broker_is_redis, broker_redis_client, store_client
from config.keys import KeySpace
from config.settings import Settings
from tasks.breaker import CircuitBreaker
from tasks.indexes import total_members
from tasks.metrics import NONE, OTHER

__all__ = [
    "BREAKER_REASONS",
    "QueueDepth",
    "QueueProbe",
    "RedisStateCollector",
    "kombu_queue_probe",
    "redis_queue_probe",
]

logger = logging.getLogger("clix.metrics")

#: ``reason`` label values of ``clix_breaker_state``.
BREAKER_REASONS = ("auth", "outage", "none")
_BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Messages in the trigger queue: waiting, and handed out but unacknowledged."""

    ready: int
    unacked: int | None = None  # known for the Redis broker only


QueueProbe = Callable[[], QueueDepth]

# kombu's Redis transport keeps a queue as lists: the queue's name for priority
# 0 and "<name>\x06\x16<step>" for the other priority steps, plus one `unacked`
# hash for every queue of the broker database (kombu.transport.redis.Channel).
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
_KOMBU_SEP = "\x06\x16"
_KOMBU_UNACKED = "unacked"


def redis_queue_probe(conn: redis.Redis, queue: str) -> QueueProbe:
    """Depth of ``queue`` on a Redis broker (``unacked`` counts the whole broker database)."""
    names = [queue if step == 0 else f"{queue}{_KOMBU_SEP}{step}" for step in _KOMBU_PRIORITY_STEPS]

    def probe() -> QueueDepth:
        pipe = conn.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        pipe.hlen(_KOMBU_UNACKED)
        *lengths, unacked = pipe.execute()
        return QueueDepth(sum(int(n) for n in lengths), int(unacked))

    return probe


def kombu_queue_probe(broker_url: str, queue: str, *, timeout_s: float = 2.0) -> QueueProbe:
    """Depth of ``queue`` on any kombu broker (AMQP...) by a passive ``queue_declare``."""

    def probe() -> QueueDepth:
        with Connection(broker_url, connect_timeout=timeout_s) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=0)  # no retry sleeps inside a scrape
            channel = conn.channel()
            try:
                declared = channel.queue_declare(queue=queue, passive=True)
            finally:
                channel.close()
        return QueueDepth(int(declared.message_count))

    return probe


class RedisStateCollector(Collector):
    """Reads the DLQ depth, the breaker and the queue depth when Prometheus scrapes.

    Each part that cannot be read is left out of that scrape (and logged at
    debug level); ``clix_redis_up`` says whether the store's Redis answered.
    """

    def __init__(
        self,
        conn: redis.Redis,
        keys: KeySpace,
        *,
        breaker: CircuitBreaker | None = None,
        queue_probe: QueueProbe | None = None,
    ) -> None:
        self.conn = conn
        self.keys = keys
        self.breaker = breaker
        self.queue_probe = queue_probe

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout_s: float = 2.0) -> RedisStateCollector:
        """A collector for the configured store, project and broker (clients of its own).

        Short timeouts: a scrape must answer within Prometheus' scrape timeout.
        The breaker is left out when ``CLIX_PROJECT_ID`` is unset.
        """

        conn = store_client(settings, timeout_s=timeout_s, connect_timeout_s=timeout_s, retry=False)
        keys = KeySpace.of(settings)
        breaker = None
        if settings.clix_project_id:
            breaker = CircuitBreaker(conn, keys.breaker(settings.clix_project_id))
        broker = settings.broker_url
        probe: QueueProbe
        if broker_is_redis(settings):
            broker_conn = (
                conn
                if broker == settings.redis_url
                else broker_redis_client(settings, timeout_s=timeout_s)
            )
            probe = redis_queue_probe(broker_conn, settings.clix_queue)
        else:
            probe = kombu_queue_probe(broker, settings.clix_queue, timeout_s=timeout_s)
        return cls(conn, keys, breaker=breaker, queue_probe=probe)

    def describe(self) -> list[Metric]:
        """Nothing: keeps registering from reading Redis (no auto-describe)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges of this scrape."""
        up = 1
        try:
            depth = total_members(self.conn, [b.dlq_index for b in self.keys.buckets()])
            state = self.breaker.state() if self.breaker is not None else None
        except Exception as exc:  # noqa: BLE001 - a scrape reports Redis trouble, never raises
            logger.debug("metrics: could not read Redis: %s", type(exc).__name__)
            up = 0
        else:
            yield _gauge("clix_dlq_depth", "Entries in the dead-letter queue.", depth)
            if state is not None:
                reason = state.reason or NONE
                breaker = GaugeMetricFamily(
                    "clix_breaker_state",
                    "Fleet-wide circuit breaker: 0 closed, 1 half-open, 2 open.",
                    labels=["reason"],
                )
                breaker.add_metric(
                    [reason if reason in BREAKER_REASONS else OTHER],
                    _BREAKER_LEVELS.get(state.state, 2),  # unknown: assume the worst
                )
                yield breaker
        yield _gauge("clix_redis_up", "1 when the store's Redis answered this scrape.", up)
        if self.queue_probe is None:
            return
        try:
            queue = self.queue_probe()
        except Exception as exc:  # noqa: BLE001 - best effort: no gauge this scrape
            logger.debug("metrics: could not read the broker queue: %s", type(exc).__name__)
            return
        yield _gauge("clix_queue_depth", "Messages waiting in the trigger queue.", queue.ready)
        if queue.unacked is not None:
            yield _gauge(
                "clix_unacked_messages",
                "Redis broker: messages delivered to workers and not yet acknowledged "
                "(all queues of the broker database).",
                queue.unacked,
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
