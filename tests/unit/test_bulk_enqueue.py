"""The bulk path: per batch, every pending record in one round trip, then one broker pipeline.

The broker is kombu's Redis transport on fakeredis: its connections are
counted, so "one pipeline" is what the broker connection sent, not a timing.
The pending records go to another fakeredis server, as the store does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import fakeredis
import kombu.transport.redis
import pytest
import redis
from celery import Celery
from kombu.exceptions import BatchPublishError

from config.celery_app import TASK_NAME, celery_config
from config.keys import KeySpace
from config.settings import Settings
from tasks.errors import InvalidTrigger
from tasks.pending import ENQUEUED_AT_HEADER, PendingLedger
from tasks.producer import enqueue_batches
from tasks.trigger import TriggerTask


class BrokerConnection(fakeredis.FakeRedisConnection):  # type: ignore[misc]
    """A broker connection that records what it sends, and can be made to fail a publish."""

    sent: ClassVar[list[bytes]] = []  # replaced per test
    fail_publishes: ClassVar[bool] = False

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        packed = b"".join(command) if isinstance(command, list | tuple) else bytes(command)
        if self.fail_publishes and b"LPUSH" in packed:
            raise redis.ConnectionError("broker went away")
        self.sent.append(packed)
        super().send_packed_command(command, check_health)


@dataclass
class Producer:
    """A project task on a fake Redis broker, and the ledger its records go to."""

    task: TriggerTask
    broker: fakeredis.FakeRedis
    queue: str
    ledger: PendingLedger
    #: queue length each time the ledger wrote a batch, and the batch's size
    records: list[tuple[int, int]] = field(default_factory=list)

    def enqueue(self, triggers: list[dict[str, Any]], size: int) -> list[str]:
        return list(enqueue_batches(self.task, triggers, self.ledger, size=size))

    def queued(self) -> list[dict[str, Any]]:
        """The messages in the queue, oldest first."""
        return [json.loads(raw) for raw in reversed(self.broker.lrange(self.queue, 0, -1))]

    def publishes(self) -> list[int]:
        """LPUSH commands in each write the broker connection made that held any."""
        return [packed.count(b"LPUSH") for packed in BrokerConnection.sent if b"LPUSH" in packed]


MakeProducer = Callable[..., Producer]


@pytest.fixture
def make_producer(
    make_settings: Callable[..., Settings],
    fake_redis: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MakeProducer]:
    monkeypatch.setattr(kombu.transport.redis.Channel, "connection_class", BrokerConnection)
    monkeypatch.setattr(BrokerConnection, "sent", [])
    apps: list[Celery] = []

    def build(**overrides: Any) -> Producer:
        host = f"broker-{uuid.uuid4().hex[:8]}"  # a fake server of this test alone
        queue = f"clix.unit.{uuid.uuid4().hex[:8]}"
        settings = make_settings(
            celery_broker_url=f"redis://{host}:6379/0", clix_queue=queue, **overrides
        )
        app = Celery(f"bulk-{queue}")
        app.conf.update(celery_config(settings))
        apps.append(app)

        # shared=False: a shared task would be added to every app finalized later
        @app.task(bind=True, base=TriggerTask, name=TASK_NAME, shared=False)  # type: ignore[untyped-decorator]
        def task(self: TriggerTask, **_: Any) -> None:
            """Never runs: only published."""

        broker = fakeredis.FakeRedis(host=host, port=6379)
        ledger = PendingLedger(fake_redis, KeySpace(settings.clix_key_prefix), ttl_s=3_600)
        producer = Producer(task, broker, queue, ledger)
        record = ledger.record

        def watched(triggers: Any, enqueued_at_ms: int | None = None) -> int:
            triggers = list(triggers)
            producer.records.append((int(broker.llen(queue)), len(triggers)))
            return record(triggers, enqueued_at_ms)

        ledger.record = watched  # type: ignore[method-assign]
        return producer

    yield build
    for app in apps:
        app.close()


def triggers(count: int, campaign: str = "camp-bulk") -> list[dict[str, Any]]:
    return [
        {"campaign_id": campaign, "idempotency_key": f"k{i}", "properties": {"n": i}}
        for i in range(count)
    ]


def test_each_batch_writes_its_records_in_one_round_trip_before_any_of_its_messages(
    make_producer: MakeProducer,
) -> None:
    producer = make_producer()

    ids = producer.enqueue(triggers(7), size=3)

    # (messages already queued, records written) at each of the three writes
    assert producer.records == [(0, 3), (3, 3), (6, 1)]
    queued = producer.queued()
    assert [m["headers"]["id"] for m in queued] == ids
    assert len(set(ids)) == 7
    assert producer.ledger.depth() == 7
    stamps = {m["headers"][ENQUEUED_AT_HEADER] for m in queued}
    assert all(isinstance(stamp, int) and stamp > 0 for stamp in stamps)


def test_each_batch_of_messages_reaches_a_redis_broker_in_one_pipeline(
    make_producer: MakeProducer,
) -> None:
    producer = make_producer()

    producer.enqueue(triggers(7), size=3)

    assert producer.publishes() == [3, 3, 1]


def test_a_single_publish_without_a_batch_sends_each_message_on_its_own(
    make_producer: MakeProducer,
) -> None:
    producer = make_producer()  # the contrast that makes the pipeline test meaningful

    for kwargs in triggers(3):
        producer.task.publish_recorded(kwargs, 1)

    assert producer.publishes() == [1, 1, 1]


def test_a_bad_trigger_stops_the_run_before_anything_of_its_batch_is_written(
    make_producer: MakeProducer,
) -> None:
    producer = make_producer()
    items = [*triggers(4), {"campaign_id": "camp-bulk", "idempotency_key": ""}]

    with pytest.raises(InvalidTrigger, match="idempotency_key"):
        producer.enqueue(items, size=3)

    assert producer.ledger.depth() == 3  # the first batch, whole
    assert len(producer.queued()) == 3


def test_a_publish_that_fails_mid_batch_leaves_the_records_for_the_reconciler(
    make_producer: MakeProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = make_producer()
    producer.enqueue(triggers(1, campaign="camp-warm"), size=3)  # connection and queue set up
    monkeypatch.setattr(BrokerConnection, "fail_publishes", True)

    with pytest.raises(BatchPublishError, match="delivery is uncertain"):
        producer.enqueue(triggers(3), size=3)

    assert producer.ledger.depth() == 1 + 3  # every record of the failed batch is there
    keys = producer.ledger.older_than(2**62, 10)
    assert sum("camp-bulk" in key for key in keys) == 3


@pytest.mark.parametrize(("sent_events", "expected"), [(False, 0), (True, 3)])
def test_producers_publish_task_sent_events_only_when_configured(
    make_producer: MakeProducer, sent_events: bool, expected: int
) -> None:
    producer = make_producer(clix_task_sent_events=sent_events)

    producer.enqueue(triggers(3), size=3)

    # events go to the fanout exchange ``celeryev``: a PUBLISH on the Redis broker
    events = sum(packed.count(b"PUBLISH") for packed in BrokerConnection.sent)
    assert events == expected
    assert len(producer.queued()) == 3
