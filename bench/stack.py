"""What a benchmark runs against: a broker Redis, a store Redis, the sandbox, workers.

The broker and the store are separate ``redis-server`` processes so that
``INFO commandstats`` tells the broker's traffic (kombu) from our own (the
ledger, limiter, breaker, DLQ and Celery's result backend, which lives on
``REDIS_URL``). Processes come from :mod:`tests.integration.processes`, like
every other bench and the integration tests.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.integration.processes import SandboxProcess, WorkerProcess, clean_env
from worker.redis_server import RedisServer

PROJECT_ID = "bench"
API_KEY = "bench-" + uuid.uuid4().hex

#: Apps a benchmark can start: the real worker and the bare baseline.
APPS = {"clix": "worker", "bare": "bench.bare_app"}


@dataclass
class Run:
    """One app's queue, key prefix and campaign: nothing is shared between runs."""

    app: str
    env: dict[str, str]
    queue: str
    prefix: str
    campaign: str


@dataclass
class Stack:
    """Two Redis servers and the sandbox, started together and stopped together."""

    workdir: Path
    broker: RedisServer = field(init=False)
    store: RedisServer = field(init=False)
    sandbox: SandboxProcess = field(init=False)
    _stats: httpx.Client = field(init=False)
    _producer_run: Run | None = field(init=False, default=None)

    @classmethod
    @contextlib.contextmanager
    def running(cls, workdir: Path) -> Iterator[Stack]:
        """Start everything; stop everything on the way out, whatever happened."""
        stack = cls(workdir)
        with contextlib.ExitStack() as stop:
            stack.broker = stop.enter_context(RedisServer(appendonly=False))
            stack.store = stop.enter_context(RedisServer(appendonly=False))
            stack.sandbox = SandboxProcess(workdir, PROJECT_ID, API_KEY)
            stop.callback(stack.sandbox.stop)
            stack._stats = httpx.Client(base_url=stack.sandbox.url, timeout=30)
            stop.callback(stack._stats.close)
            yield stack

    def new_run(self, app: str, **settings: str) -> Run:
        """A fresh queue and key prefix for ``app`` (``clix`` or ``bare``)."""
        suffix = uuid.uuid4().hex[:8]
        queue, prefix = f"bench.{suffix}", f"b{suffix}"
        env = clean_env(
            REDIS_URL=self.store.url,
            CELERY_BROKER_URL=self.broker.url,
            CLIX_BASE_URL=self.sandbox.url,
            CLIX_PROJECT_ID=PROJECT_ID,
            CLIX_API_KEY=API_KEY,
            CLIX_QUEUE=queue,
            CLIX_KEY_PREFIX=prefix,
            # The limiter still runs (its round trip is part of the cost); its
            # rate is out of the way so it cannot cap the measured throughput.
            CLIX_RATE_LIMIT_PER_S="1000000",
            BENCH_QUEUE=queue,
            **settings,
        )
        return Run(app, env, queue, prefix, f"bench-{suffix}")

    def producer_run(self) -> Run:
        """The one run this process's producer API (``enqueue_trigger``) publishes to.

        One per process: Celery caches its router and queues on first use, so
        the app cannot be pointed at a second queue afterwards. Phases that
        enqueue share it and tell their triggers apart by campaign.
        """
        if self._producer_run is None:
            from bench.load import use_fleet

            self._producer_run = self.new_run("clix")
            use_fleet(self._producer_run.env)
        return replace(self._producer_run, campaign=f"bench-{uuid.uuid4().hex[:8]}")

    def start_worker(
        self,
        run: Run,
        *,
        pool: str | None,
        concurrency: int | None,
        prefetch: int | None = None,
    ) -> WorkerProcess:
        """A worker of ``run.app``; ``None`` leaves a flag to the app's defaults.

        Started as the README starts it: log level INFO, mingle, gossip and
        heartbeat on (the bare app gets the same flags).
        """
        extra = ("--prefetch-multiplier", str(prefetch)) if prefetch else ()
        return WorkerProcess(
            self.workdir,
            run.env,
            queue=run.queue,
            pool=pool,
            concurrency=concurrency,
            app=APPS[run.app],
            cluster=True,
            extra_args=extra,
        )

    def fresh(self, latency_ms: float) -> None:
        """Start a measurement clean, with the sandbox answering after ``latency_ms``.

        The sandbox forgets its records (they cost it memory and scans), and the
        broker is emptied: messages a killed worker held would otherwise be
        restored, and counted, during the next measurement.
        """
        self._stats.post("/_sandbox/reset").raise_for_status()
        self.sandbox.configure(latency_ms=latency_ms)
        broker = self.redis("broker")
        # Queues and kombu's unacked records only: its exchange bindings stay (a
        # producer that declared its queue once does not declare it again).
        stale = [*broker.scan_iter(match="bench.*", count=1000), "unacked", "unacked_index"]
        broker.delete(*stale)
        broker.close()

    def seen(self, campaign: str) -> int:
        """Requests the sandbox has seen for a campaign."""
        reply = self._stats.get("/_sandbox/stats", params={"campaign_id": campaign})
        return int(reply.json()["total"])

    def records(self, campaign: str) -> list[dict[str, Any]]:
        """The sandbox's records of a campaign."""
        return self.sandbox.requests(campaign)

    def redis(self, which: str) -> redis.Redis:
        """A client of the ``broker`` or the ``store`` server."""
        server = self.broker if which == "broker" else self.store
        return redis.Redis.from_url(server.url)


def _process_tree(pid: int) -> list[int]:
    """A process and its descendants, the process first."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # pid (comm) state ppid ...: comm may hold spaces, so split after ")"
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def process_tree_rss_mb(pid: int) -> list[float]:
    """Resident memory (MB) of a process and each of its descendants, the process first."""
    sizes = []
    for member in _process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        sizes.append(int(line.split()[1]) / 1024)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sizes


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its descendants have used so far."""
    total = 0
    for member in _process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")
