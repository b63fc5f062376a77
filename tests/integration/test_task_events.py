"""Task events (what Flower shows) reach a monitor for every trigger, in batches.

The worker buffers task events and publishes them together (worker/consumer.py):
a monitor still sees every trigger received, started and succeeded, while the
broker sees far fewer publishes than triggers. The broker runs on a Redis of
its own, so every PUBLISH it sees is the worker's.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, wait_until
from tests.integration.redis_monitor import CommandLog
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration

TRIGGERS = 200
EVENTS = ("task-received", "task-started", "task-succeeded")


class EventLog:
    """Celery's event receiver in a thread: the task events a monitor such as Flower gets."""

    def __init__(self, fleet: Fleet) -> None:
        self.app = fleet.producer()
        self.seen: dict[str, set[str]] = defaultdict(set)  # task id -> event types
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _record(self, event: dict[str, Any]) -> None:
        if event.get("type") in EVENTS:
            with self._lock:
                self.seen[str(event["uuid"])].add(str(event["type"]))

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self._record})
            self._receiver.should_stop = self._stop.is_set()
            # drains with a 1 s timeout and checks should_stop between drains
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> EventLog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)

    def complete(self, task_ids: list[str]) -> bool:
        with self._lock:
            return all(self.seen.get(task_id) == set(EVENTS) for task_id in task_ids)


def test_every_trigger_s_task_events_reach_a_monitor_in_far_fewer_publishes_than_triggers(
    own_fleet: Callable[..., Fleet],
    redis_factory: Callable[[], RedisServer],
    sandbox: SandboxProcess,
    campaign: str,
) -> None:
    broker = redis_factory()
    fleet = own_fleet(CELERY_BROKER_URL=broker.url)
    task_ids = [
        result.id
        for result in fleet.send_many(
            {"campaign_id": campaign, "idempotency_key": f"k{i}"} for i in range(TRIGGERS)
        )
    ]
    events = EventLog(fleet).start()
    try:
        # the receiver listens before the first event can be sent
        wait_until(lambda: broker.client().pubsub_numpat() > 0, 30, "the event receiver")
        with CommandLog(broker.url) as broker_log:
            fleet.start_worker(pool=None, concurrency=None)  # the README's worker
            wait_until(lambda: events.complete(task_ids), 120, "every trigger's task events")
        sent = sum(1 for r in sandbox.requests(campaign) if r["status"] == 200)
    finally:
        events.stop()

    assert sent == TRIGGERS
    # Celery's own flush publishes about once per trigger; batches carry many
    task_event_publishes = sum(
        n for channel, n in broker_log.publishes.items() if "celeryev/task." in channel
    )
    assert 0 < task_event_publishes < TRIGGERS / 2, broker_log.publishes
