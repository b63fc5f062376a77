"""The bare baseline: the least a Celery trigger worker can do per message.

SET NX PX to claim, one httpx POST over a pooled client, SET to record the
result; no validation, retries, DLQ or lease renewal. Same broker settings as
the real app (acks_late, prefetch 1, the broker's connection cap), so the ratio
isolates our own cost. Clients are made lazily in the process that uses them
(after a prefork fork, or once for the threads and gevent pools), one httpx
client per concurrent request like the real worker, so the baseline is not
held back by one connection pool's lock on a pool of threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import redis
from celery import Celery

from config.celery_app import BROKER_MAX_CONNECTIONS

app = Celery("bare", broker=os.environ.get("CELERY_BROKER_URL") or os.environ["REDIS_URL"])
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ["BENCH_QUEUE"],
    task_ignore_result=True,
    accept_content=["json"],
    broker_transport_options={"max_connections": BROKER_MAX_CONNECTIONS},
)

_lock = threading.Lock()
_pid: int | None = None
_redis: redis.Redis | None = None
_idle: list[httpx.Client] = []
_tls = httpx.create_ssl_context()


def _store() -> redis.Redis:
    global _pid, _redis
    with _lock:
        if _redis is None or _pid != os.getpid():
            _redis, _pid = redis.Redis.from_url(os.environ["REDIS_URL"]), os.getpid()
            _idle.clear()  # a parent's connections are not ours
        return _redis


@contextmanager
def _http() -> Iterator[httpx.Client]:
    with _lock:
        client = _idle.pop() if _idle else None
    if client is None:
        client = httpx.Client(
            base_url=os.environ["CLIX_BASE_URL"],
            headers={
                "X-Clix-Project-ID": os.environ["CLIX_PROJECT_ID"],
                "X-Clix-API-Key": os.environ["CLIX_API_KEY"],
            },
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=_tls,
        )
    try:
        yield client
    finally:
        with _lock:
            _idle.append(client)


@app.task(name="trigger_campaign")
def trigger_campaign(**kwargs: Any) -> None:
    r = _store()
    key = f"bare:{kwargs['campaign_id']}:{kwargs['idempotency_key']}"
    if not r.set(key, "1", nx=True, px=45_000):
        return
    body = {k: v for k, v in kwargs.items() if k in ("audience", "properties")}
    with _http() as http:
        reply = http.post(f"/api/v1/campaigns/{kwargs['campaign_id']}:trigger", json=body)
    r.set(key, reply.json()["trigger_id"], ex=86_400)
