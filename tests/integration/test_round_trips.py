"""What one delivered trigger costs the store's Redis: round trips counted with MONITOR.

The broker runs on a Redis of its own here, so every command the store sees is
ours (the ledger, the limiter, the breaker, the Celery result, the pending
records) and the broker's fetch/ack traffic does not blur the count. A script
counts as the one round trip it is (tests/integration/redis_monitor.py).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pytest

from tasks import ledger_scripts
from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, wait_until
from tests.integration.redis_monitor import CommandLog
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration

TRIGGERS = 400


def test_a_delivered_trigger_costs_the_store_two_round_trips_of_our_own(
    own_fleet: Callable[..., Fleet],
    redis_factory: Callable[[], RedisServer],
    sandbox: SandboxProcess,
    campaign: str,
) -> None:
    broker = redis_factory()
    fleet = own_fleet(CELERY_BROKER_URL=broker.url)
    results = fleet.send_many(
        {"campaign_id": campaign, "idempotency_key": f"k{i}"} for i in range(TRIGGERS)
    )
    with CommandLog(fleet.redis_url) as log:  # the publishes' pending records are behind us
        started = time.monotonic()
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
        elapsed_s = time.monotonic() - started
    # the result Celery's AsyncResult.get() reads was written by the commit
    first = results[0].get(timeout=30)
    assert first["deduplicated"] is False
    assert first["trigger_id"] == fleet.store.status(fleet.scope(campaign, "k0")).trigger_id

    used = dict(log.commands)
    periodic = sum(n for name, n in used.items() if name not in ("evalsha", "eval"))
    print(f"\nstore round trips per trigger: {sum(used.values()) / TRIGGERS:.2f} {used}")
    # claim (with the first request's rate-limit slot) and commit (with the
    # result): 2 scripts per trigger; what each worker process does about once
    # a second (the breaker check, the reconciler, the consumption check) and
    # at start-up adds a little, spread over the run
    claims = log.scripts[_sha(ledger_scripts.CLAIM)]
    commits = log.scripts[_sha(ledger_scripts.COMMIT)]
    # one EVALSHA per trigger each; a pool process whose first EVALSHA of a
    # script found it not loaded yet (NOSCRIPT) loads it and calls it again
    assert TRIGGERS <= claims <= TRIGGERS + 2
    assert TRIGGERS <= commits <= TRIGGERS + 2
    # the rest is periodic, not per trigger: a few calls a second per process
    # (3 here: the main process and 2 pool processes), however long the run took
    other = sum(log.scripts.values()) - claims - commits + periodic
    assert other <= 40 + 3 * 3 * elapsed_s, (elapsed_s, used, log.scripts)
    assert used.get("setex", 0) == 0  # Celery wrote no result of its own


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - how Redis names scripts
