"""The bare baseline: the least a Celery trigger worker can do per message.

SET NX PX to claim, one httpx POST over a pooled client, SET to record the
result; no validation, retries, DLQ or lease renewal. Same broker settings as
the real app (acks_late, prefetch 1), so the ratio isolates our own cost.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import redis
from celery import Celery
from celery.signals import worker_process_init

app = Celery("bare", broker=os.environ["REDIS_URL"])
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ["BENCH_QUEUE"],
    task_ignore_result=True,
    accept_content=["json"],
)
_clients: dict[str, Any] = {}


@worker_process_init.connect
def _connect(**_: Any) -> None:
    _clients["redis"] = redis.Redis.from_url(os.environ["REDIS_URL"])
    _clients["http"] = httpx.Client(
        base_url=os.environ["CLIX_BASE_URL"],
        headers={
            "X-Clix-Project-ID": os.environ["CLIX_PROJECT_ID"],
            "X-Clix-API-Key": os.environ["CLIX_API_KEY"],
        },
    )


@app.task(name="trigger_campaign")
def trigger_campaign(**kwargs: Any) -> None:
    r, http = _clients["redis"], _clients["http"]
    key = f"bare:{kwargs['campaign_id']}:{kwargs['idempotency_key']}"
    if not r.set(key, "1", nx=True, px=45_000):
        return
    body = {k: v for k, v in kwargs.items() if k in ("audience", "properties")}
    reply = http.post(f"/api/v1/campaigns/{kwargs['campaign_id']}:trigger", json=body)
    r.set(key, reply.json()["trigger_id"], ex=86_400)
