"""Publishing subscribes to no result channel; waiting for a result still gets it.

Apps publish to kombu's in-memory transport; their Redis result backends talk
to one fakeredis server, which is where subscriptions are observed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from celery import Celery
from celery.result import AsyncResult

from config.celery_app import TASK_NAME, app
from config.result_backend import ClixCelery, SubscribeOnWait

MakeApp = Callable[[type[Celery]], Celery]


@pytest.fixture
def make_app(fake_server: fakeredis.FakeServer) -> Iterator[MakeApp]:
    apps: list[Celery] = []

    def build(cls: type[Celery]) -> Celery:
        built = cls(f"results-{len(apps)}")
        built.conf.update(
            broker_url="memory://",
            result_backend="redis://localhost:1/0",  # never dialled: the client is fakeredis
            task_default_queue="clix.unit.results",
        )
        built.backend.client = fakeredis.FakeRedis(server=fake_server)
        apps.append(built)
        return built

    yield build
    for built in apps:
        built.close()


def _wait_for(check: Callable[[], Any], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def _waiting(result: AsyncResult, fake_redis: fakeredis.FakeRedis) -> Iterator[dict[str, Any]]:
    """``result.get()`` in a thread, subscribed when the block runs; what it got, after."""
    got: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: got.update(value=result.get(timeout=10)))
    waiter.start()
    _wait_for(fake_redis.pubsub_channels, "get() to subscribe")
    yield got
    waiter.join(timeout=15)


def test_the_project_app_uses_a_backend_that_does_not_subscribe_on_publish() -> None:
    assert isinstance(app.backend, SubscribeOnWait)


def test_publishing_subscribes_to_no_result_channel(
    make_app: MakeApp, fake_redis: fakeredis.FakeRedis
) -> None:
    plain, ours = make_app(Celery), make_app(ClixCelery)

    kept = plain.send_task(TASK_NAME, kwargs={"campaign_id": "c", "idempotency_key": "plain"})
    subscribed_by_celery = fake_redis.pubsub_channels()
    del kept  # Celery unsubscribes when the AsyncResult is collected
    _wait_for(lambda: not fake_redis.pubsub_channels(), "the plain app to unsubscribe")
    results = [
        ours.send_task(TASK_NAME, kwargs={"campaign_id": "c", "idempotency_key": f"k{i}"})
        for i in range(3)
    ]

    assert len(subscribed_by_celery) == 1  # what Celery's own backend does per publish
    assert fake_redis.pubsub_channels() == []
    assert all(not result.ignored for result in results)  # the worker still stores results


def test_get_finds_a_result_stored_before_the_wait(make_app: MakeApp) -> None:
    producer, worker = make_app(ClixCelery), make_app(Celery)
    result = producer.send_task(TASK_NAME, kwargs={"campaign_id": "c", "idempotency_key": "k"})

    worker.backend.store_result(result.id, {"trigger_id": "trg-1"}, "SUCCESS")

    assert result.get(timeout=5) == {"trigger_id": "trg-1"}


def test_get_receives_a_result_stored_while_it_waits(
    make_app: MakeApp, fake_redis: fakeredis.FakeRedis
) -> None:
    producer, worker = make_app(ClixCelery), make_app(Celery)
    result = producer.send_task(TASK_NAME, kwargs={"campaign_id": "c", "idempotency_key": "k"})

    with _waiting(result, fake_redis) as got:
        worker.backend.store_result(result.id, {"trigger_id": "trg-2"}, "SUCCESS")

    assert got == {"value": {"trigger_id": "trg-2"}}
    assert fake_redis.pubsub_channels() == []  # unsubscribed once the result arrived


def test_get_finds_a_result_stored_before_its_subscription_took_effect(
    make_app: MakeApp, fake_redis: fakeredis.FakeRedis
) -> None:
    # The subscription and the first read race over two connections: a result
    # committed between them is stored but its message is never received. The
    # stand-in stores it without publishing, after get() has read and subscribed.
    producer, worker = make_app(ClixCelery), make_app(Celery)
    result = producer.send_task(TASK_NAME, kwargs={"campaign_id": "c", "idempotency_key": "k"})
    meta = {"status": "SUCCESS", "result": {"trigger_id": "trg-3"}, "task_id": result.id}

    with _waiting(result, fake_redis) as got:
        fake_redis.set(worker.backend.get_key_for_task(result.id), worker.backend.encode(meta))

    assert got == {"value": {"trigger_id": "trg-3"}}
    assert fake_redis.pubsub_channels() == []
