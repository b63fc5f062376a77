"""The core scenarios with RabbitMQ as the broker (the store, limiter and DLQ stay in Redis)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis

from config.celery_app import amqp_dead_letter_names
from tasks.dlq import DeadLetterQueue
from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, wait_until
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def amqp_fleets(
    own_fleet: Callable[..., Fleet], rabbitmq_url: str
) -> Iterator[Callable[..., Fleet]]:
    """Fleets on RabbitMQ; their queues and dead-letter topology are deleted afterwards."""
    made: list[Fleet] = []

    def build(**overrides: str) -> Fleet:
        fleet = own_fleet(CELERY_BROKER_URL=rabbitmq_url, **overrides)
        made.append(fleet)
        return fleet

    yield build
    for fleet in made:
        for worker in fleet.workers:
            worker.stop()  # before the queues they consume go away
        _delete_dead_letter_topology(fleet)


@pytest.fixture
def amqp_fleet(amqp_fleets: Callable[..., Fleet]) -> Fleet:
    return amqp_fleets()


def _delete_dead_letter_topology(fleet: Fleet) -> None:
    exchange, parking = amqp_dead_letter_names(fleet.queue)
    with fleet.producer().connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_delete(parking)
        channel.exchange_delete(exchange)
        channel.exchange_delete(fleet.queue)  # the trigger queue's own


@pytest.fixture
def rabbitmq_policy(rabbitmq_url: str) -> Iterator[Callable[[str, dict[str, object]], None]]:
    """Set a RabbitMQ policy on one queue (as an operator would); cleared afterwards."""
    host = urlparse(rabbitmq_url.replace("amqp://", "http://", 1)).hostname
    if host not in ("127.0.0.1", "localhost", "::1") or shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl for the local broker to set a policy on the test queue")
    names: list[str] = []

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
        )

    def set_policy(queue: str, definition: dict[str, object]) -> None:
        name = f"clix-test-{uuid.uuid4().hex[:8]}"
        done = ctl(
            "set_policy", "--apply-to", "queues", "--priority", "100",
            name, f"^{re.escape(queue)}$", json.dumps(definition),
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"rabbitmqctl cannot set a policy here: {done.stderr.strip()[:200]}")
        names.append(name)

    yield set_policy
    for name in names:
        ctl("clear_policy", name)


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


def test_rabbitmq_a_message_requeued_past_the_delivery_limit_lands_in_our_dlq_with_its_trigger(
    amqp_fleets: Callable[..., Fleet],
    rabbitmq_policy: Callable[[str, dict[str, object]], None],
    sandbox: SandboxProcess,
    campaign: str,
) -> None:
    # Every 429 puts the message back at once, uncounted by our own ledger: only
    # RabbitMQ's delivery count grows. An operator's policy lowers the queue's
    # limit to 2 (RabbitMQ 4.x would do the same at 20) before the queue exists.
    fleet = amqp_fleets(CLIX_RATE_LIMITED_MAX_WAIT_S="0")
    rabbitmq_policy(fleet.queue, {"delivery-limit": 2})
    sandbox.script(campaign, *[{"status": 429}] * 3)  # the 4th request would succeed
    fleet.start_worker(concurrency=1)
    trigger = {"campaign_id": campaign, "idempotency_key": "looping", "properties": {"n": 1}}
    task_id = fleet.send(**trigger)

    [entry] = wait_until(lambda: fleet.dlq.entries(), 60, "the DLQ entry")
    assert (entry["reason"], entry["trigger"], entry["task_id"]) == (
        "redelivery_limit",
        trigger,
        task_id,
    )
    assert "delivery limit" in entry["error"]
    assert [r["status"] for r in sandbox.requests(campaign)] == [429, 429, 429]
    # marked dead in the ledger, as our own redelivery limit does: a copy sends nothing
    assert fleet.store.status(fleet.scope(campaign, "looping")).dead_entry_id == entry["id"]

    # kept whole: a replay delivers it (the script is spent, Clix answers 200)
    fleet.dlq.replay(entry["id"], lambda kwargs: fleet.send(**kwargs))
    wait_until(lambda: _done(fleet, campaign, "looping"), 30, "delivery of the replay")
    assert fleet.dlq.entries() == []
    assert len(sandbox.requests(campaign)) == 4


def test_rabbitmq_a_message_parked_while_redis_is_down_reaches_our_dlq_once_redis_is_back(
    amqp_fleets: Callable[..., Fleet],
    rabbitmq_policy: Callable[[str, dict[str, object]], None],
    sandbox: SandboxProcess,
    campaign: str,
    tmp_path: Path,
) -> None:
    # The store's Redis goes away mid-delivery: every delivery after that is put
    # back (counted by RabbitMQ only) until RabbitMQ parks the message, and the
    # drain cannot write the DLQ entry either. It must hold the message, not drop it.
    store = RedisServer(directory=tmp_path / "store", appendonly=True).start()
    try:
        fleet = amqp_fleets(REDIS_URL=store.url)
        rabbitmq_policy(fleet.queue, {"delivery-limit": 2})
        sandbox.script(campaign, {"status": 429, "delay_ms": 2000})
        worker = fleet.start_worker(concurrency=1)
        trigger = {"campaign_id": campaign, "idempotency_key": "outage"}
        fleet.send(**trigger)
        wait_until(lambda: sandbox.requests(campaign), 30, "the first request")
        store.stop()

        wait_until(lambda: "holding it" in worker.log(), 60, "the parked message held")
        store = RedisServer(port=store.port, directory=tmp_path / "store").start()
        dlq = DeadLetterQueue(redis.Redis.from_url(store.url), fleet.keys, ttl_s=3600)
        [entry] = wait_until(lambda: dlq.entries(), 30, "the DLQ entry after Redis is back")
        assert (entry["reason"], entry["trigger"]) == ("redelivery_limit", trigger)

        worker.stop()  # an unacknowledged parked message would go back to its queue now
        _, parking = amqp_dead_letter_names(fleet.queue)
        with fleet.producer().connection_for_write() as conn:
            assert conn.default_channel.queue_declare(parking, passive=True).message_count == 0
            assert conn.default_channel.queue_declare(fleet.queue, passive=True).message_count == 0
        assert len(dlq.entries()) == 1
        dlq.redis.close()
    finally:
        store.stop()
