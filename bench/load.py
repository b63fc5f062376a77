"""Load for the benches: a backlog published up front, or a steady paced stream.

Both apps under comparison get the same messages: a typical trigger (one
target, two properties), published with ``send_task`` as a producer in another
language would (the worker accepts it; the bare app cannot tell the
difference). The steady stream goes through the real producer API,
``enqueue_trigger``, and stamps each trigger with the time it was enqueued, so
the sandbox's arrival time gives the enqueue-to-Clix latency.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery

from config.celery_app import app as clix_app
from config.celery_app import celery_config
from config.settings import Settings


def typical_trigger(campaign: str, number: int, **properties: Any) -> dict[str, Any]:
    """One target, two properties: the shape the issue's memory figures use."""
    return {
        "campaign_id": campaign,
        "idempotency_key": f"k{number}",
        "audience": {"targets": [{"project_user_id": f"u{number}"}]},
        "properties": {"order_id": f"ORD-{number}", "item_count": 3, **properties},
    }


def publish_backlog(
    broker_url: str, queue: str, campaign: str, count: int, *, first: int = 0
) -> float:
    """Queue ``count`` triggers numbered from ``first`` over one connection; return seconds."""
    producer = Celery("bench-producer", broker=broker_url)
    producer.conf.update(task_default_queue=queue)
    started = time.perf_counter()
    with producer.producer_or_acquire() as pool_producer:
        for number in range(first, first + count):
            producer.send_task(
                "trigger_campaign",
                kwargs=typical_trigger(campaign, number),
                queue=queue,
                producer=pool_producer,
                argsrepr="()",
                kwargsrepr="{}",
            )
    took = time.perf_counter() - started
    producer.close()
    return took


def use_fleet(env: dict[str, str]) -> Settings:
    """Point this process's producer API (``enqueue_trigger``) at a bench fleet."""
    values = {k.lower(): v for k, v in env.items() if k.startswith(("CLIX_", "REDIS_", "CELERY_"))}
    settings = Settings(**values, _env_file=None)  # type: ignore[call-arg]
    clix_app.conf.update(celery_config(settings))
    return settings


class SteadyLoad(threading.Thread):
    """Calls ``enqueue_trigger`` at ``rate_per_s`` for ``duration_s``, stamping each trigger.

    ``sent`` maps idempotency keys to the enqueue time (``time.time()``); a
    trigger's ``properties.sent_at_us`` carries the same instant to the sandbox.
    """

    def __init__(self, campaign: str, rate_per_s: float, duration_s: float) -> None:
        super().__init__(name="bench-steady-load", daemon=True)
        self.campaign = campaign
        self.rate_per_s = rate_per_s
        self.duration_s = duration_s
        self.sent = 0
        self.behind_s = 0.0  # how far the producer fell behind its schedule, at most

    def run(self) -> None:
        from tasks import enqueue_trigger

        total = max(1, int(self.rate_per_s * self.duration_s))
        start = time.monotonic()
        for number in range(total):
            due = start + number / self.rate_per_s
            lag = time.monotonic() - due
            if lag < 0:
                time.sleep(-lag)
            else:
                self.behind_s = max(self.behind_s, lag)
            kwargs = typical_trigger(self.campaign, number, sent_at_us=time.time_ns() // 1000)
            enqueue_trigger(**kwargs)
            self.sent += 1
