"""Every publish of the task through a project app gets one pending record, whatever the call.

The apps here publish to kombu's in-memory transport; their receivers write to
fakeredis. Each test connects its receiver to Celery's ``before_task_publish``
and disconnects it afterwards.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
from celery import Celery
from celery.signals import before_task_publish
from kombu.message import Message

from config.celery_app import TASK_NAME, celery_config
from config.keys import KeySpace
from config.settings import Settings
from tasks.pending import ENQUEUED_AT_HEADER, PendingLedger
from tasks.publishing import PendingRecorder, trigger_kwargs

T0_MS = 1_700_000_000_000


@dataclass
class Producer:
    """A project app on the in-memory broker, its receiver and its ledger."""

    app: Celery
    queue: str
    ledger: PendingLedger
    keys: KeySpace

    def received(self) -> list[Message]:
        """Every message waiting in the app's queue, oldest first."""
        found = []
        with self.app.connection_for_read() as conn:
            queue = conn.SimpleQueue(self.queue)
            while queue.qsize():
                message = queue.get(timeout=1)
                message.ack()
                found.append(message)
            queue.close()
        return found


MakeProducer = Callable[..., Producer]


@pytest.fixture
def make_producer(
    make_settings: Callable[..., Settings], fake_redis: fakeredis.FakeRedis
) -> Iterator[MakeProducer]:
    receivers: list[PendingRecorder] = []
    apps: list[Celery] = []

    def build(
        ledger_for: Callable[[Settings], PendingLedger] | None = None, *, connect: bool = True
    ) -> Producer:
        queue = f"clix.unit.{uuid.uuid4().hex[:8]}"
        settings = make_settings(celery_broker_url="memory://", clix_queue=queue)
        app = Celery(f"producer-{queue}")
        app.conf.update(celery_config(settings))
        keys = KeySpace(settings.clix_key_prefix)
        ledger = PendingLedger(fake_redis, keys, ttl_s=3_600)
        receiver = PendingRecorder(app, ledger_for or (lambda _settings: ledger))
        if connect:
            before_task_publish.connect(receiver, sender=TASK_NAME, weak=False)
            receivers.append(receiver)
        apps.append(app)
        return Producer(app, queue, ledger, keys)

    yield build
    for receiver in receivers:
        before_task_publish.disconnect(receiver, sender=TASK_NAME)
    for app in apps:
        app.close()


def test_send_task_through_the_app_writes_one_record_and_stamps_the_message(
    make_producer: MakeProducer, fake_redis: fakeredis.FakeRedis
) -> None:
    producer = make_producer()
    kwargs = {"campaign_id": "camp-1", "idempotency_key": "key-1", "properties": {"n": 1}}

    producer.app.send_task(TASK_NAME, kwargs=kwargs)

    record = producer.ledger.get(producer.keys.pending("camp-1", "key-1"))
    assert record is not None
    assert record.kwargs == kwargs
    [message] = producer.received()
    assert message.headers[ENQUEUED_AT_HEADER] == record.enqueued_at_ms
    seconds, micros = fake_redis.time()
    assert 0 < record.enqueued_at_ms <= int(seconds) * 1000 + int(micros) // 1000
    assert producer.ledger.depth() == 1


def test_each_of_many_send_task_calls_gets_its_own_record(make_producer: MakeProducer) -> None:
    producer = make_producer()

    for i in range(20):
        producer.app.send_task(
            TASK_NAME, kwargs={"campaign_id": "camp-1", "idempotency_key": f"key-{i}"}
        )

    assert producer.ledger.depth() == 20
    assert len(producer.received()) == 20


def test_a_publish_that_already_carries_the_stamp_writes_nothing_again(
    make_producer: MakeProducer,
) -> None:
    producer = make_producer()

    producer.app.send_task(
        TASK_NAME,
        kwargs={"campaign_id": "camp-1", "idempotency_key": "key-1"},
        headers={ENQUEUED_AT_HEADER: T0_MS},
    )

    assert producer.ledger.depth() == 0
    [message] = producer.received()
    assert message.headers[ENQUEUED_AT_HEADER] == T0_MS


def test_the_redacted_reprs_travel_once_in_the_headers_not_again_in_the_properties(
    make_producer: MakeProducer,
) -> None:
    producer = make_producer()

    producer.app.send_task(
        TASK_NAME,
        kwargs={"campaign_id": "camp-1", "idempotency_key": "key-1"},
        headers={ENQUEUED_AT_HEADER: T0_MS},
        argsrepr="()",
        kwargsrepr="{'campaign_id': 'camp-1', 'idempotency_key': 'key-1'}",
    )

    [message] = producer.received()
    assert message.headers["kwargsrepr"] == "{'campaign_id': 'camp-1', 'idempotency_key': 'key-1'}"
    assert message.headers["argsrepr"] == "()"
    assert "kwargsrepr" not in message.properties
    assert "argsrepr" not in message.properties
    assert "reply_to" not in message.properties  # no rpc:// result backend to answer there


def test_the_reply_queue_stays_when_results_go_back_over_rpc(make_producer: MakeProducer) -> None:
    producer = make_producer()
    producer.app.conf.result_backend = "rpc://"

    producer.app.send_task(
        TASK_NAME,
        kwargs={"campaign_id": "camp-1", "idempotency_key": "key-1"},
        headers={ENQUEUED_AT_HEADER: T0_MS},
    )

    [message] = producer.received()
    assert message.properties["reply_to"]


def test_a_publish_through_another_app_is_left_alone(make_producer: MakeProducer) -> None:
    ours = make_producer()
    other = make_producer(connect=False)  # same task name, another app and queue

    other.app.send_task(TASK_NAME, kwargs={"campaign_id": "camp-1", "idempotency_key": "key-1"})

    assert ours.ledger.depth() == 0
    [message] = other.received()
    assert ENQUEUED_AT_HEADER not in message.headers


def test_another_task_published_through_the_app_is_left_alone(
    make_producer: MakeProducer,
) -> None:
    producer = make_producer()

    producer.app.send_task(
        "some_other_task",
        kwargs={"campaign_id": "camp-1", "idempotency_key": "key-1"},
        queue=producer.queue,
    )

    assert producer.ledger.depth() == 0
    assert len(producer.received()) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"campaign_id": "camp-1"}, id="no-key"),
        pytest.param({"campaign_id": 7, "idempotency_key": "key-1"}, id="campaign-not-text"),
        pytest.param({"campaign_id": "camp-1", "idempotency_key": None}, id="key-null"),
    ],
)
def test_a_message_that_cannot_be_keyed_is_published_without_a_record(
    make_producer: MakeProducer, kwargs: dict[str, Any]
) -> None:
    producer = make_producer()

    producer.app.send_task(TASK_NAME, kwargs=kwargs)

    assert producer.ledger.depth() == 0
    assert len(producer.received()) == 1  # the worker dead-letters it


def test_a_store_that_cannot_be_written_is_logged_with_the_trigger_and_the_publish_goes_on(
    make_producer: MakeProducer, caplog: pytest.LogCaptureFixture, api_key: str
) -> None:
    def down(_settings: Settings) -> PendingLedger:
        raise ConnectionError("store down")

    producer = make_producer(down)

    with caplog.at_level(logging.ERROR, logger="clix.producer"):
        producer.app.send_task(
            TASK_NAME, kwargs={"campaign_id": "camp-1", "idempotency_key": "key-1"}
        )

    [message] = producer.received()
    assert ENQUEUED_AT_HEADER not in message.headers
    [line] = [r.getMessage() for r in caplog.records if r.name == "clix.producer"]
    assert "published without a pending record" in line
    assert "campaign_id=camp-1 idempotency_key=key-1" in line
    assert api_key not in caplog.text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            ((), {"campaign_id": "c", "idempotency_key": "k"}, {}),
            {"campaign_id": "c", "idempotency_key": "k"},
            id="protocol-2",
        ),
        pytest.param(
            {"task": TASK_NAME, "kwargs": {"campaign_id": "c", "idempotency_key": "k"}},
            {"campaign_id": "c", "idempotency_key": "k"},
            id="protocol-1",
        ),
        pytest.param(((), ["c", "k"], {}), None, id="kwargs-a-list"),
        pytest.param("raw", None, id="a-string"),
        pytest.param(((),), None, id="args-only"),
    ],
)
def test_trigger_kwargs_reads_both_message_protocols(
    body: Any, expected: dict[str, Any] | None
) -> None:
    assert trigger_kwargs(body) == expected
