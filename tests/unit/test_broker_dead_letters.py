"""RabbitMQ's delivery limit: the queue arguments, and the drain of the parking queue.

The parked messages are real kombu messages with a Celery protocol-2 body and
the ``x-death`` headers RabbitMQ 3.10 adds when it dead-letters at
``x-delivery-limit``; Redis is fakeredis (``connected = False`` is an outage).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
from kombu.message import Message

from config.celery_app import (
    AMQP_DELIVERY_LIMIT,
    amqp_dead_letter_names,
    amqp_dead_letter_queue,
    amqp_queue_arguments,
    celery_config,
    check_delivery_limit,
)
from config.keys import Scope
from config.settings import ConfigurationError, Settings
from tasks.context import WorkerContext
from tests.unit.conftest import PROJECT_ID, ClixHarness
from worker.broker_dead_letters import (
    RETRY_S,
    BrokerDeadLetterDrain,
    ParkedMessages,
    trigger_of,
)

AMQP_URL = "amqp://guest:guest@mq:5672//"
TRIGGER = {"campaign_id": "camp-1", "idempotency_key": "key-1", "properties": {"n": 1}}
DEATH = {
    "x-death": [
        {
            "count": 1,
            "reason": "delivery_limit",
            "queue": "clix.triggers",
            "time": datetime(2026, 12, 1, 18, 0, tzinfo=UTC),
            "exchange": "",
            "routing-keys": ["clix.triggers"],
        }
    ],
    "x-first-death-queue": "clix.triggers",
    "x-first-death-reason": "delivery_limit",
}


class RecordingChannel:
    """The part of a channel a message acknowledges through."""

    no_ack_consumers = None  # kombu looks here before acknowledging

    def __init__(self) -> None:
        self.acked: list[Any] = []

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        self.acked.append(delivery_tag)


def parked(body: bytes, channel: RecordingChannel, **headers: Any) -> Message:
    """A message as the drain receives it from the parking queue."""
    return Message(
        body=body,
        delivery_tag=1,
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": "trigger_campaign", "id": "task-9", **DEATH, **headers},
        accept=["application/json"],  # what kombu's consumer hands its messages
        channel=channel,
    )


def celery_body(kwargs: dict[str, Any]) -> bytes:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([[], kwargs, embed]).encode()


@pytest.fixture
def ctx(
    settings: Settings, fake_redis: fakeredis.FakeRedis, mock_clix: Callable[..., ClixHarness]
) -> WorkerContext:
    return WorkerContext.build(settings, redis_conn=fake_redis, clix=mock_clix().client)


# --- the queue arguments ------------------------------------------------------------------


def test_a_quorum_trigger_queue_has_an_explicit_limit_and_an_at_least_once_dead_letter_route(
    make_settings: Callable[..., Settings],
) -> None:
    config = celery_config(make_settings(celery_broker_url=AMQP_URL))
    [queue] = config["task_queues"]
    exchange, _ = amqp_dead_letter_names("clix.triggers")
    assert queue.queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": AMQP_DELIVERY_LIMIT,
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": "clix.triggers",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_a_classic_trigger_queue_declares_only_its_type(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(celery_broker_url=AMQP_URL, clix_amqp_queue_type="classic")
    [queue] = celery_config(settings)["task_queues"]
    assert queue.queue_arguments == {"x-queue-type": "classic"}


def test_a_limit_of_zero_leaves_the_limit_and_route_to_a_policy(settings: Settings) -> None:
    assert amqp_queue_arguments(settings, 0) == {"x-queue-type": "quorum"}


def test_the_redis_broker_gets_no_amqp_queues(settings: Settings) -> None:
    assert "task_queues" not in celery_config(settings)


def test_the_parking_queue_is_bound_to_the_dead_letter_route_with_a_positive_limit_of_its_own(
    make_settings: Callable[..., Settings],
) -> None:
    queue = amqp_dead_letter_queue(make_settings(clix_queue="q1"))
    assert (queue.name, queue.exchange.name, queue.routing_key) == (
        "q1.redelivery-limit",
        "q1.dlx",
        "q1",
    )
    assert queue.durable
    assert queue.queue_arguments["x-queue-type"] == "quorum"
    assert queue.queue_arguments["x-delivery-limit"] > 0  # -1 drops at once on 3.x
    assert "x-dead-letter-exchange" not in queue.queue_arguments


@pytest.mark.parametrize("limit", [-1, 3, 2])
def test_a_broker_limit_negative_or_not_above_our_redelivery_limit_is_refused(
    settings: Settings, limit: int
) -> None:
    assert settings.clix_redelivery_limit == 3
    with pytest.raises(ConfigurationError, match="delivery limit"):
        check_delivery_limit(settings, limit)


@pytest.mark.parametrize("limit", [0, 4, AMQP_DELIVERY_LIMIT])
def test_a_broker_limit_above_our_redelivery_limit_or_zero_is_accepted(
    settings: Settings, limit: int
) -> None:
    check_delivery_limit(settings, limit)


def test_an_amqp_app_is_refused_when_our_redelivery_limit_reaches_the_broker_limit(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        celery_broker_url=AMQP_URL,
        clix_redelivery_limit=AMQP_DELIVERY_LIMIT,
        clix_idempotency_ttl_s=10**9,  # outlasts that many deliveries
    )
    with pytest.raises(ConfigurationError, match="CLIX_REDELIVERY_LIMIT"):
        celery_config(settings)


def test_a_classic_queue_has_no_broker_limit_to_check(
    make_settings: Callable[..., Settings],
) -> None:
    check_delivery_limit(make_settings(clix_amqp_queue_type="classic"), 1)


# --- the drain ----------------------------------------------------------------------------


def test_trigger_of_reads_the_kwargs_of_protocol_2_and_protocol_1_payloads() -> None:
    assert trigger_of([[], TRIGGER, {}]) == TRIGGER
    assert trigger_of({"task": "trigger_campaign", "kwargs": TRIGGER}) == TRIGGER
    assert trigger_of("not a task") is None
    assert trigger_of([[], "kwargs", {}]) is None


def test_a_parked_trigger_becomes_a_redelivery_limit_entry_kept_whole_then_is_acked(
    ctx: WorkerContext, scope: Scope
) -> None:
    # one delivery claimed and put back uncounted (a 429): only RabbitMQ counted it
    claim = ctx.store.claim(scope, "task-9|a", redelivery_limit=3)
    ctx.store.release(scope, "task-9|a", uncount=True)
    channel = RecordingChannel()

    assert ParkedMessages(ctx).drain(parked(celery_body(TRIGGER), channel))

    [entry] = ctx.dlq.entries()
    assert (entry["reason"], entry["trigger"], entry["task_id"]) == (
        "redelivery_limit",
        TRIGGER,
        "task-9",
    )
    assert (entry["campaign_id"], entry["idempotency_key"]) == ("camp-1", "key-1")
    assert entry["attempts"] == 1
    assert entry["first_seen"] == datetime.fromtimestamp(claim.first_seen, UTC).isoformat(
        timespec="milliseconds"
    )
    assert "clix.triggers" in entry["error"]
    assert "delivery limit" in entry["error"]
    assert "raw" not in entry
    assert ctx.store.status(scope).dead_entry_id == entry["id"]  # a copy sends nothing
    assert channel.acked == [1]


def test_a_parked_message_whose_key_another_delivery_holds_keeps_their_claim(
    ctx: WorkerContext, scope: Scope
) -> None:
    ctx.store.claim(scope, "other-task|b", redelivery_limit=3)
    channel = RecordingChannel()

    assert ParkedMessages(ctx).drain(parked(celery_body(TRIGGER), channel))

    [entry] = ctx.dlq.entries()
    assert entry["reason"] == "redelivery_limit"
    status = ctx.store.status(scope)
    assert (status.state, status.dead_entry_id) == ("in_flight", None)
    assert channel.acked == [1]


def test_a_parked_message_that_cannot_be_decoded_is_kept_raw_and_acked(
    ctx: WorkerContext,
) -> None:
    channel = RecordingChannel()

    assert ParkedMessages(ctx).drain(parked(b"\xff not json", channel))

    [entry] = ctx.dlq.entries()
    assert (entry["reason"], entry["trigger"], entry["campaign_id"]) == (
        "invalid_payload",
        None,
        None,
    )
    assert entry["raw"].startswith("base64:")
    assert channel.acked == [1]


def test_a_parked_message_waits_unacknowledged_while_redis_is_down(
    ctx: WorkerContext, fake_server: fakeredis.FakeServer
) -> None:
    channel = RecordingChannel()
    message = parked(celery_body(TRIGGER), channel)
    drain = ParkedMessages(ctx)

    fake_server.connected = False
    assert not drain.drain(message)
    assert channel.acked == []

    fake_server.connected = True
    assert ctx.dlq.entries() == []
    assert drain.drain(message)
    assert [e["trigger"] for e in ctx.dlq.entries()] == [TRIGGER]
    assert channel.acked == [1]


class FakeTimer:
    """Celery's consumer timer: records what it is asked to call later."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Callable[[], None]]] = []

    def call_after(self, seconds: float, fun: Callable[[], None]) -> FakeTimer:
        self.scheduled.append((seconds, fun))
        return self

    def cancel(self) -> None:
        self.scheduled.clear()


def test_the_drain_step_holds_what_redis_refused_and_writes_it_on_a_later_tick(
    ctx: WorkerContext, fake_server: fakeredis.FakeServer
) -> None:
    step = BrokerDeadLetterDrain(object())
    step.parked, step.timer = ParkedMessages(ctx), FakeTimer()
    channel = RecordingChannel()
    message = parked(celery_body(TRIGGER), channel)

    fake_server.connected = False
    step.on_message(message)
    [(wait_s, tick)] = step.timer.scheduled
    assert (wait_s, step.held, channel.acked) == (RETRY_S, message, [])
    step.timer.scheduled.clear()
    tick()  # Redis still down: held again, for another tick
    assert len(step.timer.scheduled) == 1
    assert step.held is message

    fake_server.connected = True
    step.timer.scheduled.pop()[1]()
    assert step.held is None
    assert channel.acked == [1]
    assert [e["reason"] for e in ctx.dlq.entries()] == ["redelivery_limit"]
    assert ctx.dlq.entries()[0]["project_id"] == PROJECT_ID
