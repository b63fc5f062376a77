"""Prometheus metrics that trigger deliveries count as they happen.

What a delivery counts (two calls, from :mod:`tasks.delivery` and :mod:`tasks.attempts`)::

    clix_triggers_total{outcome, reason}        counter, one per outcome event
    clix_request_duration_seconds{status}       histogram, one per HTTP request to Clix

The gauges a scrape reads from Redis (DLQ depth, breaker, queue depth) are in
:mod:`tasks.state_metrics`: tasks never update them.

Labels come from small fixed sets only (:data:`OUTCOMES`, :data:`DEAD_LETTER_REASONS`,
:data:`STATUSES`): any other value is counted as
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
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, values

from tasks.dlq import REASONS as DEAD_LETTER_REASONS
from tasks.errors import ClixError

__all__ = [
    "DEAD_LETTER_REASONS",
    "LATENCY_BUCKETS",
    "MULTIPROC_ENV",
    "NONE",
    "OTHER",
    "OUTCOMES",
    "STATUSES",
    "TriggerMetrics",
    "count_outcome",
    "init",
    "multiprocess_dir",
    "observe_request",
    "outcome_label",
    "reason_label",
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
#: The label value of anything outside a known set.
OTHER = "other"
#: The ``reason`` label of outcomes that have none.
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
        # Known series start at zero, so rate() and alerts see them before the first event;
        # their children are kept (a labels() lookup takes a lock and builds a key).
        known = [(o, NONE) for o in OUTCOMES if o != "dead_lettered"]
        known += [("dead_lettered", reason) for reason in DEAD_LETTER_REASONS]
        self._counters = {labels: self.triggers.labels(*labels) for labels in known}
        self._histograms = {status: self.request_duration.labels(status) for status in STATUSES}

    def count_outcome(self, outcome: str, reason: str | None = None) -> None:
        """Count one outcome event (labels validated against the known sets)."""
        label = outcome_label(outcome)
        labels = (label, reason_label(label, reason))
        counter = self._counters.get(labels)
        (counter if counter is not None else self.triggers.labels(*labels)).inc()

    def observe_request(self, latency_s: float, status: str) -> None:
        """Record one request's duration under its result class."""
        label = status_label(status)
        histogram = self._histograms.get(label)
        if histogram is None:
            histogram = self.request_duration.labels(label)
        histogram.observe(max(0.0, latency_s))


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
