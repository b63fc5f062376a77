"""What one delivered trigger costs the store's Redis: round trips counted with MONITOR.

The broker runs on a Redis of its own here, so every command the store sees is
ours (the ledger, the limiter, the breaker, the Celery result, the pending
records) and the broker's fetch/ack traffic does not blur the count. MONITOR
marks the commands a Lua script runs, so a script counts as the one round
trip it is.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, wait_until
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration

TRIGGERS = 400


class CommandLog:
    """MONITOR in a thread: every command clients send (not those scripts run)."""

    def __init__(self, url: str) -> None:
        self.conn = redis.Redis.from_url(url)
        self.commands: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommandLog:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.conn.ping()  # wakes the monitor up so it sees the stop
        self._thread.join(timeout=10)
        self.conn.close()

    def _run(self) -> None:
        with self.conn.monitor() as monitor:
            self._ready.set()
            while not self._stop.is_set():
                entry = monitor.next_command()
                if entry.get("client_type") == "lua" or entry.get("client_address") == "lua":
                    continue
                self.commands[str(entry["command"]).split()[0].lower()] += 1


def test_a_delivered_trigger_costs_the_store_two_round_trips_of_our_own(
    own_fleet: Callable[..., Fleet],
    redis_factory: Callable[[], RedisServer],
    sandbox: SandboxProcess,
    campaign: str,
) -> None:
    broker = redis_factory()
    fleet = own_fleet(CELERY_BROKER_URL=broker.url)
    producer = fleet.producer()
    results = []
    with producer.producer_or_acquire() as pool:
        for i in range(TRIGGERS):
            results.append(
                producer.send_task(
                    "trigger_campaign",
                    producer=pool,
                    kwargs={"campaign_id": campaign, "idempotency_key": f"k{i}"},
                )
            )
    with CommandLog(fleet.redis_url) as log:  # the publishes' pending records are behind us
        fleet.start_worker(concurrency=2)
        wait_until(
            lambda: sum(1 for r in sandbox.requests(campaign) if r["status"] == 200) >= TRIGGERS,
            120,
            "every trigger sent",
            every_s=0.5,
        )
        wait_until(
            lambda: fleet.store.status(fleet.scope(campaign, f"k{TRIGGERS - 1}")).state == "done",
            30,
            "the last commit",
        )
    # the result Celery's AsyncResult.get() reads was written by the commit
    first = results[0].get(timeout=30)
    assert first["deduplicated"] is False
    assert first["trigger_id"] == fleet.store.status(fleet.scope(campaign, "k0")).trigger_id

    used = dict(log.commands)
    periodic = sum(n for name, n in used.items() if name not in ("evalsha", "eval"))
    scripts = used.get("evalsha", 0) + used.get("eval", 0)
    print(f"\nstore round trips per trigger: {sum(used.values()) / TRIGGERS:.2f} {used}")
    # claim (with the first request's rate-limit slot) and commit (with the
    # result): 2 scripts per trigger; what each worker process does about once
    # a second (the breaker check, the reconciler, the consumption check) and
    # at start-up adds a little, spread over the run
    assert scripts <= 2 * TRIGGERS + 40
    assert sum(used.values()) / TRIGGERS <= 2.5
    assert used.get("setex", 0) == 0  # Celery wrote no result of its own
    assert periodic <= 0.25 * TRIGGERS
