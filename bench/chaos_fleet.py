"""The processes of a chaos run: two Redis servers, a store proxy, the sandbox, workers.

The store's Redis (``REDIS_URL``: ledger, DLQ, pending records, limiter) and the
broker's Redis (``CELERY_BROKER_URL``) are separate ``redis-server`` processes,
both with AOF, so "restart Redis" and "restart the broker" are separate faults.
Workers reach the store through a :class:`TcpProxy` (so its connections can be
cut) and the broker directly. A restart keeps the port and the data directory.
"""

from __future__ import annotations

import random
import shutil
import threading
import uuid
from pathlib import Path

from tests.integration.processes import FAST_SETTINGS, SandboxProcess, WorkerProcess, clean_env
from tests.integration.proxy import TcpProxy
from worker.redis_server import RedisServer

__all__ = ["PROJECT_ID", "ChaosFleet"]

PROJECT_ID = "chaos-project"

#: Worker settings on top of FAST_SETTINGS: a killed worker's messages come back
#: within seconds, a delivery waiting out 429s gives up (uncounted) well before
#: the broker would hand its message out again, and 8 attempts make exhausting
#: them on the sandbox's random 12% of 503s and drops unlikely (0.12^8 ~ 4e-8 per
#: trigger; with FAST_SETTINGS' 3 it is one trigger in ~600, a DLQ entry that is
#: not poison).
CHAOS_SETTINGS = {
    "CLIX_MAX_ATTEMPTS": "8",
    "CLIX_VISIBILITY_TIMEOUT_S": "15",
    "CLIX_UNACKED_RESTORE_INTERVAL_S": "1",
    "CLIX_RATE_LIMITED_MAX_WAIT_S": "5",
    "CLIX_LOG_FORMAT": "json",
}


class ChaosFleet:
    """Starts everything in ``workdir``; :meth:`stop` stops all of it (safe to call twice)."""

    def __init__(
        self,
        workdir: Path,
        *,
        api_key: str,
        rate_per_s: float,
        seed: int,
        broker_in_store: bool = False,
        default_pool: bool = False,
    ) -> None:
        """``broker_in_store``: no broker of its own, the default deployment's layout.

        The queue then lives in the store's Redis, reached through the proxy
        like everything else: a cut or a restart of the store is one of the
        broker too. ``default_pool``: workers started as the README starts
        them (the app's pool of threads), not prefork with 2 processes.
        """
        self.workdir = workdir
        self.broker_in_store = broker_in_store
        self.default_pool = default_pool
        self.api_key = api_key
        self.rate_per_s = rate_per_s
        self.rng = random.Random(seed)
        suffix = uuid.uuid4().hex[:8]
        self.queue = f"chaos.{suffix}"
        self.prefix = f"chaos{suffix}"
        self.store = RedisServer(directory=workdir / "store-redis", appendonly=True)
        self.broker = RedisServer(directory=workdir / "broker-redis", appendonly=True)
        self.proxy: TcpProxy | None = None
        self.sandbox: SandboxProcess | None = None
        self.workers: list[WorkerProcess] = []
        self.env: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self, *, workers: int, sandbox_args: list[str]) -> ChaosFleet:
        """Start the servers, the proxy, the sandbox and ``workers`` workers (in parallel)."""
        self.store.start()
        if not self.broker_in_store:
            self.broker.start()
        self.proxy = TcpProxy(self.store.port).start()
        self.sandbox = SandboxProcess(self.workdir, PROJECT_ID, self.api_key, *sandbox_args)
        broker = {} if self.broker_in_store else {"CELERY_BROKER_URL": self.broker.url}
        self.env = clean_env(
            REDIS_URL=self.proxy.url(),
            **broker,
            CLIX_BASE_URL=self.sandbox.url,
            CLIX_PROJECT_ID=PROJECT_ID,
            CLIX_API_KEY=self.api_key,
            CLIX_QUEUE=self.queue,
            CLIX_KEY_PREFIX=self.prefix,
            CLIX_RATE_LIMIT_PER_S=f"{self.rate_per_s:g}",
            **{**FAST_SETTINGS, **CHAOS_SETTINGS},
        )
        threads = [threading.Thread(target=self.add_worker) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(self.workers) < workers:
            raise RuntimeError(f"only {len(self.workers)} of {workers} workers started")
        return self

    @property
    def broker_url(self) -> str:
        """Where the queue is, directly (the raw poison is published there)."""
        return self.store.url if self.broker_in_store else self.broker.url

    @property
    def producer_env(self) -> dict[str, str]:
        """A producer's settings: the workers' own, so the store proxy's cuts reach it too."""
        return dict(self.env)

    def add_worker(self) -> WorkerProcess:
        """Start one more worker and wait until it is ready."""
        # the default pool: no -P, no -c, what `celery -A worker worker` runs
        pool, concurrency = (None, None) if self.default_pool else ("prefork", 2)
        worker = WorkerProcess(
            self.workdir, self.env, queue=self.queue, pool=pool, concurrency=concurrency
        )
        with self._lock:
            self.workers.append(worker)
        return worker

    def kill_random_worker(self) -> str:
        """SIGKILL a random live worker (main process and pool); return its name."""
        with self._lock:
            live = [w for w in self.workers if w.proc.poll() is None]
            victim = self.rng.choice(live)
        victim.kill()
        return victim.name

    def restart_store(self) -> None:
        """Stop the store's Redis (SIGTERM: AOF flushed) and start it on the same port."""
        self.store.stop()
        self.store.start()

    def restart_broker(self) -> None:
        """Stop the broker's Redis and start it on the same port, from its AOF.

        With the broker in the store, that is the store's Redis.
        """
        server = self.store if self.broker_in_store else self.broker
        server.stop()
        server.start()

    def stop(self) -> None:
        """Stop the workers first (they hold connections), then everything else."""
        for worker in self.workers:
            worker.stop()
        self.workers = []
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        self.store.stop()
        self.broker.stop()
        for name in ("store-redis", "broker-redis"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
