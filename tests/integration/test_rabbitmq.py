"""The core scenarios with RabbitMQ as the broker (the store, limiter and DLQ stay in Redis)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def amqp_fleet(own_fleet: Callable[..., Fleet], rabbitmq_url: str) -> Fleet:
    return own_fleet(CELERY_BROKER_URL=rabbitmq_url)


def _done(fleet: Fleet, campaign: str, key: str) -> str | None:
    status = fleet.store.status(fleet.scope(campaign, key))
    return status.trigger_id if status.state == "done" else None


def test_rabbitmq_delivers_once_per_key_with_retries_and_dead_letters_final_errors(
    amqp_fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = amqp_fleet
    fleet.start_worker(concurrency=2)
    sandbox.script(campaign, {"status": 503}, {"status": 502})
    fleet.send(campaign_id=campaign, idempotency_key="flaky")
    trigger_id = wait_until(lambda: _done(fleet, campaign, "flaky"), 30, "delivery")
    fleet.send(campaign_id=campaign, idempotency_key="flaky")  # a duplicate
    assert [r["status"] for r in sandbox.requests(campaign)] == [503, 502, 200]
    assert sandbox.requests(campaign)[-1]["trigger_id"] == trigger_id

    sandbox.script(campaign, {"status": 400})
    fleet.send(campaign_id=campaign, idempotency_key="bad")
    [entry] = wait_until(lambda: fleet.dlq.entries(), 30, "the DLQ entry")
    assert (entry["reason"], entry["status_code"]) == ("rejected", 400)
    assert len(sandbox.requests(campaign)) == 4  # the duplicate sent nothing


def test_rabbitmq_redelivers_after_the_worker_is_killed(
    amqp_fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = amqp_fleet
    first = fleet.start_worker(concurrency=1)
    sandbox.script(campaign, {"status": 200, "delay_ms": 3000})
    fleet.send(campaign_id=campaign, idempotency_key="k")
    scope = fleet.scope(campaign, "k")
    wait_until(lambda: fleet.store.meta(scope).get("sending") == "1", 30, "in flight")
    pid = first.proc.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        os.kill(int(child), signal.SIGKILL)
    first.kill()
    fleet.start_worker(concurrency=1)
    wait_until(lambda: _done(fleet, campaign, "k"), 60, "redelivery by RabbitMQ")
    assert 1 <= len(sandbox.requests(campaign)) <= 2
    assert fleet.dlq.entries() == []


def test_rabbitmq_reconciler_republishes_a_trigger_whose_publish_failed(
    amqp_fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = amqp_fleet
    fleet.start_worker(concurrency=1)
    # what enqueue_trigger does before publishing; the publish itself "failed"
    from tasks.pending import PendingLedger

    ledger = PendingLedger(fleet.redis(), fleet.keys, ttl_s=3600)
    ledger.record([{"campaign_id": campaign, "idempotency_key": "lost"}], ledger.now_ms())
    wait_until(lambda: _done(fleet, campaign, "lost"), 30, "the reconciler")
    assert len(sandbox.requests(campaign)) == 1
