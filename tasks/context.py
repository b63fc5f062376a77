"""Per-process resources: the clients one run of ``trigger_campaign`` needs.

Built once per worker process *after* fork (a Redis connection pool or an
httpx pool shared across fork is corrupted by the first child that uses it)
and handed to the task's steps as arguments. :func:`current` builds lazily and
rebuilds when it notices it is in a new process, so the solo pool, the
prefork pool and tests all get one context per process without import-time
side effects.

Sized to the concurrency, whatever it is: the threads (or gevent) pool runs
tens of deliveries in one process on one context. Both pools grow on demand
to what runs at once and hold no lock while a command or request is on the
wire: redis-py's pool hands each thread a connection of its own (its lock
guards a list pop), and :class:`tasks.client.ClixClient` gives each concurrent
request an ``httpx.Client`` of its own. :func:`current` itself takes no lock
once the context exists.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass

import redis

from config.connections import store_client
from config.keys import KeySpace
from config.settings import Settings, get_settings
from tasks.breaker import CircuitBreaker
from tasks.client import ClixClient
from tasks.dlq import DeadLetterQueue
from tasks.history import AttemptHistory
from tasks.idempotency import IdempotencyStore
from tasks.pending import PendingLedger
from tasks.plans import PlanRegistry
from tasks.ratelimit import RateLimiter

__all__ = [
    "WorkerContext",
    "circuit_breaker",
    "current",
    "dead_letter_queue",
    "idempotency_store",
    "plan_registry",
    "producer_ledger",
    "rate_limiter",
    "redis_client",
    "reset",
]


@dataclass(slots=True)
class WorkerContext:
    """Everything a delivery uses, built once per process."""

    settings: Settings
    #: ``CLIX_PROJECT_ID``, checked present when the context was built
    project_id: str
    conn: redis.Redis
    store: IdempotencyStore
    dlq: DeadLetterQueue
    clix: ClixClient
    limiter: RateLimiter
    breaker: CircuitBreaker
    plans: PlanRegistry
    pending: PendingLedger
    history: AttemptHistory

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        redis_conn: redis.Redis | None = None,
        clix: ClixClient | None = None,
    ) -> WorkerContext:
        """Wire the store, DLQ and Clix client; arguments replace the real clients in tests."""
        conn = redis_conn if redis_conn is not None else redis_client(settings)
        keys = KeySpace.of(settings)
        project_id, _ = settings.require_credentials()
        return cls(
            settings=settings,
            project_id=project_id,
            conn=conn,
            store=idempotency_store(settings, conn),
            dlq=dead_letter_queue(settings, conn),
            clix=clix if clix is not None else ClixClient.from_settings(settings),
            limiter=rate_limiter(settings, conn, project_id),
            breaker=circuit_breaker(settings, conn, project_id),
            plans=plan_registry(settings.clix_plans),
            pending=PendingLedger(conn, keys, ttl_s=settings.clix_idempotency_ttl_s),
            history=_history(settings, conn, keys),
        )

    def close(self) -> None:
        """Release pooled connections."""
        self.clix.close()
        self.conn.close()


def _history(settings: Settings, conn: redis.Redis, keys: KeySpace) -> AttemptHistory:
    history = AttemptHistory(
        conn, keys, cap=settings.clix_attempt_history, ttl_s=settings.clix_idempotency_ttl_s
    )
    history.register()  # this process's short worker id, once (best effort)
    return history


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client for the store, the DLQ and the limiter (one pool per process)."""
    return store_client(settings)


_lock = threading.Lock()
_producer_ledgers: dict[tuple[int, str, str], PendingLedger] = {}


def producer_ledger(settings: Settings) -> PendingLedger:
    """The pending ledger a producer writes to: one Redis pool per process and store."""
    key = (os.getpid(), settings.redis_url, settings.clix_key_prefix)
    with _lock:
        ledger = _producer_ledgers.get(key)
        if ledger is None:
            ledger = PendingLedger(
                redis_client(settings),
                KeySpace.of(settings),
                ttl_s=settings.clix_idempotency_ttl_s,
            )
            _producer_ledgers[key] = ledger
        return ledger


@functools.lru_cache(maxsize=8)
def plan_registry(spec: str | None) -> PlanRegistry:
    """The trigger plans of ``CLIX_PLANS``, loaded once per process (raises ``PlanError``)."""
    return PlanRegistry.load(spec)


def idempotency_store(settings: Settings, conn: redis.Redis) -> IdempotencyStore:
    """The ledger on ``conn`` (``CLIX_LEASE_S``, ``CLIX_IDEMPOTENCY_TTL_S``)."""
    return IdempotencyStore(
        conn,
        KeySpace.of(settings),
        lease_ms=int(settings.clix_lease_s * 1000),
        ttl_s=settings.clix_idempotency_ttl_s,
        commit_replicas=settings.clix_redis_commit_replicas,
        commit_wait_ms=settings.clix_redis_commit_wait_ms,
    )


def dead_letter_queue(settings: Settings, conn: redis.Redis) -> DeadLetterQueue:
    """The dead-letter queue on ``conn``."""
    return DeadLetterQueue(
        conn,
        KeySpace.of(settings),
        ttl_s=settings.clix_idempotency_ttl_s,
        raw_max_bytes=settings.clix_dlq_raw_max_bytes,
    )


def rate_limiter(settings: Settings, conn: redis.Redis, project_id: str) -> RateLimiter:
    """The project's fleet-wide limiter (``CLIX_RATE_LIMIT_PER_S``)."""
    return RateLimiter(
        conn,
        KeySpace.of(settings).ratelimit(project_id),
        rate_per_s=settings.clix_rate_limit_per_s,
        burst=settings.rate_limit_burst,
        max_wait_s=settings.clix_rate_limit_max_wait_s,
        give_up_s=settings.rate_limit_give_up_s,
    )


def circuit_breaker(settings: Settings, conn: redis.Redis, project_id: str) -> CircuitBreaker:
    """The project's fleet-wide circuit breaker."""
    keys = KeySpace.of(settings)
    return CircuitBreaker(
        conn,
        keys.breaker(project_id),
        window_key=keys.breaker_window(project_id),
        window_s=settings.clix_breaker_window_s,
        min_samples=settings.clix_breaker_min_samples,
        failure_ratio=settings.clix_breaker_failure_ratio,
        systemic_ratio=settings.clix_systemic_failure_ratio,
        probe_s=settings.clix_breaker_probe_s,
        auth_probe_s=settings.clix_auth_probe_s,
        probe_timeout_s=settings.clix_request_timeout_s + 5,
    )


_context: WorkerContext | None = None
_pid: int | None = None


def current() -> WorkerContext:
    """This process's context, built on first use."""
    global _context, _pid
    context, pid = _context, _pid
    if context is not None and pid == os.getpid():
        return context  # every task calls this: no lock on the way
    with _lock:
        if _context is None or _pid != os.getpid():
            _context = WorkerContext.build(get_settings())
            _pid = os.getpid()
        return _context


def install(context: WorkerContext) -> None:
    """Use ``context`` in this process (start-up wiring and tests)."""
    global _context, _pid
    with _lock:
        _context, _pid = context, os.getpid()


def reset() -> None:
    """Drop this process's context, closing it."""
    global _context, _pid
    with _lock:
        if _context is not None and _pid == os.getpid():
            _context.close()
        _context, _pid = None, None
