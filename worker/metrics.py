"""Serve Prometheus metrics: from the worker's main process, or a separate exporter.

``CLIX_METRICS_PORT`` set: the worker's main process serves ``/metrics`` on that
port, for every pool (prefork, solo, threads). What it serves is the sum of
every pool process's counters and histograms (prometheus_client's multiprocess
mode) plus the gauges read from Redis at scrape time
(:class:`tasks.state_metrics.RedisStateCollector`).

Multiprocess mode needs ``PROMETHEUS_MULTIPROC_DIR`` in every pool process
before it builds a metric. The :class:`MetricsServer` bootstep arranges that in
the main process, before the pool forks:

* unset: a fresh temporary directory is created (and removed at exit);
* set by the operator: its ``*.db`` files from an earlier run are wiped, so
  counters start at zero like those of any restarted process. Give every
  worker instance a directory of its own.

A separate exporter (:func:`main`, as ``clix-worker metrics --port 9808``, or
:func:`serve_metrics`) serves the same data for workers that share its
``PROMETHEUS_MULTIPROC_DIR`` and run without ``CLIX_METRICS_PORT``.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from celery import bootsteps
from celery.signals import worker_process_shutdown
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from config.settings import ConfigurationError, Settings, get_settings
from tasks import metrics as task_metrics
from tasks.metrics import MULTIPROC_ENV
from tasks.state_metrics import RedisStateCollector

__all__ = [
    "MetricsServer",
    "build_registry",
    "metrics_port",
    "prepare_multiprocess_dir",
    "serve_metrics",
]

logger = logging.getLogger("clix.metrics")

#: Listen on every interface: Prometheus scrapes from another host or container.
DEFAULT_ADDR = "0.0.0.0"  # noqa: S104 - the endpoint carries no secrets nor ids


def metrics_port(settings: Settings | None = None) -> int | None:
    """``CLIX_METRICS_PORT``, or ``None`` when metrics are not served by the worker."""
    settings = settings or get_settings()
    if "clix_metrics_port" in type(settings).model_fields:
        port: int | None = getattr(settings, "clix_metrics_port", None)
        return port
    # Fallback until config.settings declares the field.
    raw = os.environ.get("CLIX_METRICS_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigurationError(f"CLIX_METRICS_PORT must be a TCP port number, got {raw!r}")
    return int(raw)


def prepare_multiprocess_dir(*, create: bool) -> str | None:
    """Make this process and the pool processes it forks count in multiprocess files.

    Call in the worker's main process before the pool starts. Uses
    ``PROMETHEUS_MULTIPROC_DIR`` when set (wiping stale files), else creates a
    temporary directory when ``create``; returns the directory, or ``None``
    (single-process metrics).
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        # Files of an earlier run would add their counts to ours; only our
        # *.db files are removed, never anything else in the directory.
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    elif create:
        directory = tempfile.mkdtemp(prefix="clix-metrics-")
        os.environ[MULTIPROC_ENV] = directory  # inherited by the pool processes
        atexit.register(_remove_dir, directory, os.getpid())
    else:
        return None
    # Built now, so the pool's forks inherit file-backed metrics whose series
    # all start at zero.
    task_metrics.init()
    worker_process_shutdown.connect(_mark_dead, weak=False, dispatch_uid="clix-metrics-dead")
    return directory


def _remove_dir(directory: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # forked children inherit atexit handlers
        shutil.rmtree(directory, ignore_errors=True)


def _mark_dead(pid: int | None = None, **_: Any) -> None:
    # Sent by each pool process as it exits: drops its live-gauge files (its
    # counters stay, so totals never go down when a child is replaced).
    if pid is not None and os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


def build_registry(
    settings: Settings | None = None,
    *,
    directory: str | None = None,
    state: RedisStateCollector | None = None,
) -> CollectorRegistry:
    """What ``/metrics`` serves: the summed per-process metrics plus the Redis gauges.

    ``directory`` defaults to ``PROMETHEUS_MULTIPROC_DIR``; without one, this
    process's own metrics are served. ``state`` defaults to a collector built
    from ``settings``.
    """
    registry = CollectorRegistry()
    directory = directory or os.environ.get(MULTIPROC_ENV)
    if directory:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(task_metrics.registry())
    registry.register(state or RedisStateCollector.from_settings(settings or get_settings()))
    return registry


def serve_metrics(
    port: int, *, addr: str = DEFAULT_ADDR, registry: CollectorRegistry | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` (default :func:`build_registry`) on ``addr:port`` from a thread."""
    if registry is None:
        if not os.environ.get(MULTIPROC_ENV):
            logger.warning(
                "%s is not set: serving this process's metrics only, not a worker's", MULTIPROC_ENV
            )
        registry = build_registry()
    return start_http_server(port, addr=addr, registry=registry)


class MetricsServer(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: file-backed metrics before the pool forks; ``/metrics`` on the port."""

    # Serve once the pool processes exist: the exporter's Redis connections are
    # then never opened before a fork (the set-up in __init__ runs earlier still).
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: WSGIServer | None = None
        try:
            self.port = metrics_port()
        except ConfigurationError as exc:
            sys.stderr.write(f"clix-worker: invalid configuration: {exc}\n")
            raise SystemExit(2) from None
        # __init__ runs for every step before any step starts, so before the
        # prefork pool forks its processes.
        self.directory = prepare_multiprocess_dir(create=self.port is not None)

    def start(self, parent: Any) -> None:
        """Start serving (an unavailable port is logged; the worker still runs)."""
        if self.port is None:
            return
        try:
            self.server, _ = serve_metrics(self.port)
        except OSError as exc:
            logger.error("cannot serve metrics on port %s: %s", self.port, exc)
            return
        logger.info(
            "serving Prometheus metrics on port %s (files in %s)", self.port, self.directory
        )

    def stop(self, parent: Any) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    terminate = shutdown = stop


def main(argv: list[str] | None = None) -> int:
    """Serve metrics until killed: a standalone exporter (``clix-worker metrics``)."""
    parser = argparse.ArgumentParser(
        prog="clix-worker metrics",
        description="Serve /metrics for the workers that share PROMETHEUS_MULTIPROC_DIR with "
        "this process (run them without CLIX_METRICS_PORT), plus the gauges read from Redis.",
    )
    parser.add_argument("--port", type=int, default=None, help="default: CLIX_METRICS_PORT")
    parser.add_argument("--addr", default=DEFAULT_ADDR, help=f"default: {DEFAULT_ADDR}")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else metrics_port()
    if port is None:
        parser.error("give --port or set CLIX_METRICS_PORT")
    logging.basicConfig(level=logging.INFO)
    _, thread = serve_metrics(port, addr=args.addr)
    logger.info("serving Prometheus metrics on %s:%s", args.addr, port)
    thread.join()
    return 0
