"""Prometheus metrics of trigger deliveries, and the gauges read from Redis at scrape time.

What a delivery counts (two calls, from :mod:`tasks.trigger`)::

    clix_triggers_total{outcome, reason}        counter, one per outcome event
    clix_request_duration_seconds{status}       histogram, one per HTTP request to Clix

What a scrape reads from Redis (:class:`RedisStateCollector`, never updated by tasks)::

    clix_dlq_depth                  entries in the dead-letter queue
    clix_breaker_state{reason}      0 closed, 1 half-open, 2 open; reason auth/outage/none
    clix_queue_depth                messages waiting in the trigger queue (broker)
    clix_unacked_messages           Redis broker: messages handed out, not yet acknowledged
    clix_redis_up                   1 when the store's Redis answered this scrape

Labels come from small fixed sets only (:data:`OUTCOMES`, :data:`DEAD_LETTER_REASONS`,
:data:`STATUSES`, :data:`BREAKER_REASONS`): any other value is counted as
``"other"``, so a campaign id, an idempotency key or a property value can never
become a label, whatever a caller passes.

Prefork pool: every pool process counts in its own memory-mapped file under
``PROMETHEUS_MULTIPROC_DIR`` and the serving process sums them at scrape time
(``prometheus_client.multiprocess``). The metric objects are built on first
use, after :mod:`worker.metrics` has set that variable in the worker's main
process and before the pool forks. Counting never raises: a metrics failure
must not turn into a requeued trigger.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from kombu.connection import Connection
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config.connections import broker_is_redis, broker_redis_client, store_client
from config.keys import KeySpace
from config.settings import Settings
from tasks.breaker import CircuitBreaker
from tasks.dlq import REASONS as DEAD_LETTER_REASONS
from tasks.errors import ClixError
from tasks.indexes import total_members

__all__ = [
    "BREAKER_REASONS",
    "DEAD_LETTER_REASONS",
    "LATENCY_BUCKETS",
    "MULTIPROC_ENV",
    "OUTCOMES",
    "STATUSES",
    "QueueDepth",
    "QueueProbe",
    "RedisStateCollector",
    "TriggerMetrics",
    "count_outcome",
    "init",
    "kombu_queue_probe",
    "multiprocess_dir",
    "observe_request",
    "outcome_label",
    "reason_label",
    "redis_queue_probe",
    "registry",
    "status_label",
    "status_of",
]

logger = logging.getLogger("clix.metrics")

#: The variable prometheus_client reads to write per-process metric files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: ``outcome`` label values. ``retried`` counts failed request attempts (the
#: delivery logs them as ``attempt_failed``); ``other`` catches anything unknown.
OUTCOMES = (
    "sent",
    "deduplicated",
    "retried",
    "rate_limited",
    "dead_lettered",
    "requeued",
    "ambiguous_duplicate",
    "breaker_probe",
    "commit_retry",
    "commit_failed",
    "bookkeeping_failed",
)
#: Outcome names of the delivery's log lines that are counted under another label.
_OUTCOME_ALIASES = {"attempt_failed": "retried"}
#: ``status`` label values of the request histogram.
STATUSES = ("2xx", "4xx", "429", "5xx", "network")
#: ``reason`` label values of ``clix_breaker_state``.
BREAKER_REASONS = ("auth", "outage", "none")
_BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}
OTHER = "other"
NONE = "none"

#: Seconds; Clix answers in tens of ms, a request times out after 10 s by default.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


def outcome_label(outcome: str) -> str:
    """The ``outcome`` label for a delivery outcome; unknown names become ``other``."""
    label = _OUTCOME_ALIASES.get(outcome, outcome)
    return label if label in OUTCOMES else OTHER


def reason_label(outcome: str, reason: str | None) -> str:
    """The ``reason`` label: a DLQ reason for ``dead_lettered``, ``none`` otherwise."""
    if outcome != "dead_lettered":
        return NONE  # only dead-lettering has a reason; anything else passed is dropped
    return reason if reason in DEAD_LETTER_REASONS else OTHER


def status_label(status: str) -> str:
    """The ``status`` label; unknown values become ``other``."""
    return status if status in STATUSES else OTHER


def status_of(error: ClixError | None) -> str:
    """Classify one request's result for :func:`observe_request` (``None``: accepted)."""
    if error is None:
        return "2xx"
    code = error.status_code
    if code is None:
        return "network"
    if code == 429:
        return "429"
    if 500 <= code < 600:
        return "5xx"
    if 400 <= code < 500:
        return "4xx"
    return OTHER


class TriggerMetrics:
    """The counter and histogram of deliveries, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.triggers = Counter(
            "clix_triggers",
            "Delivery outcomes of trigger_campaign. retried: a request attempt failed "
            "(a final 4xx and the last attempt of a budget are counted too); reason: "
            "the DLQ reason of dead_lettered.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "clix_request_duration_seconds",
            "Duration of one HTTP request to the Clix trigger endpoint, by result class.",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Known series start at zero, so rate() and alerts see them before the first event.
        for outcome in OUTCOMES:
            if outcome != "dead_lettered":
                self.triggers.labels(outcome, NONE)
        for reason in DEAD_LETTER_REASONS:
            self.triggers.labels("dead_lettered", reason)
        for status in STATUSES:
            self.request_duration.labels(status)

    def count_outcome(self, outcome: str, reason: str | None = None) -> None:
        """Count one outcome event (labels validated against the known sets)."""
        label = outcome_label(outcome)
        self.triggers.labels(label, reason_label(label, reason)).inc()

    def observe_request(self, latency_s: float, status: str) -> None:
        """Record one request's duration under its result class."""
        self.request_duration.labels(status_label(status)).observe(max(0.0, latency_s))


_lock = threading.Lock()
_process: TriggerMetrics | None = None
_process_multiprocess = False
_warned = False


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when set (metric values then live in files there)."""
    return os.environ.get(MULTIPROC_ENV) or None


def _align_value_class() -> None:
    # prometheus_client picks in-memory or file-backed values once, when it is
    # first imported. `celery worker` imports it before our code runs (the
    # Flower CLI plugin uses it), so the variable set later by the worker would
    # be ignored: switch the value class for the metrics we build from now on.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def _metrics() -> TriggerMetrics:
    global _process, _process_multiprocess
    wanted = multiprocess_dir() is not None
    built = _process
    if built is not None and _process_multiprocess == wanted:
        return built
    with _lock:
        if _process is None or _process_multiprocess != wanted:
            if wanted:
                _align_value_class()
            _process, _process_multiprocess = TriggerMetrics(CollectorRegistry()), wanted
        return _process


def init() -> TriggerMetrics:
    """Build this process's metrics now (the worker does, before the pool forks)."""
    return _metrics()


def registry() -> CollectorRegistry:
    """This process's registry of the delivery metrics (single-process exposition, tests)."""
    return _metrics().registry


def _safely(action: Callable[[TriggerMetrics], None]) -> None:
    global _warned
    try:
        action(_metrics())
    except Exception:  # a metrics fault must never fail a delivery
        if not _warned:
            _warned = True
            logger.warning(
                "could not record a metric; further failures are not logged", exc_info=True
            )


def count_outcome(outcome: str, reason: str | None = None) -> None:
    """Count one delivery outcome (``attempt_failed`` counts as ``retried``). Never raises."""
    _safely(lambda m: m.count_outcome(outcome, reason))


def observe_request(latency_s: float, status: str) -> None:
    """Record one request to Clix: seconds, and ``2xx/4xx/429/5xx/network``. Never raises."""
    _safely(lambda m: m.observe_request(latency_s, status))


# --- gauges read at scrape time --------------------------------------------------------


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
