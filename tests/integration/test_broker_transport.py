"""The broker's channel (config/broker_transport.py) against a real Redis of its own.

One client per connection pool, and a publish that writes its pending record
in the script that pushes it when the broker is the store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from config.celery_app import celery_config
from config.keys import KeySpace
from config.result_backend import ClixCelery
from config.settings import Settings
from tasks.pending import ENQUEUED_AT_HEADER
from tests.integration.processes import clean_env, run_python, wait_until
from tests.integration.proxy import TcpProxy
from tests.integration.redis_monitor import CommandLog
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration

TRIGGERS = 25

#: A producer process: enqueue_trigger for keys k0..k{n-1}, then send_task for s0..s{n-1}.
_PRODUCER = """
import sys
from tasks import enqueue_trigger
from worker import app

campaign, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    enqueue_trigger(campaign, f"k{i}", properties={"n": i})
for i in range(n):
    app.send_task("trigger_campaign", kwargs={"campaign_id": campaign, "idempotency_key": f"s{i}"})
"""


def _produce(env: dict[str, str], campaign: str) -> None:
    run_python(env, _PRODUCER, campaign, str(TRIGGERS))


def _env(store: str, broker: str | None = None) -> tuple[dict[str, str], str, KeySpace]:
    suffix = uuid.uuid4().hex[:8]
    queue, prefix = f"clix.transport.{suffix}", f"t{suffix}"
    extra = {"CELERY_BROKER_URL": broker} if broker else {}
    env = clean_env(REDIS_URL=store, CLIX_QUEUE=queue, CLIX_KEY_PREFIX=prefix, **extra)
    return env, queue, KeySpace(prefix)


def _queued_stamps(conn: redis.Redis, queue: str) -> dict[str, int]:
    stamps = {}
    for raw in conn.lrange(queue, 0, -1):
        message = json.loads(raw)
        key = message["headers"]["kwargsrepr"].split("'idempotency_key': '")[1].split("'")[0]
        stamps[key] = int(message["headers"][ENQUEUED_AT_HEADER])
    return stamps


def _publish_with(server: RedisServer, script: str) -> tuple[redis.Redis, KeySpace, dict[str, int]]:
    """Run a producer ``script`` with the broker in ``server``; its client, keys, queued stamps."""
    env, queue, keys = _env(server.url)
    run_python(env, script)
    conn = redis.Redis.from_url(server.url)
    return conn, keys, _queued_stamps(conn, queue)


def _assert_each_has_its_record(
    conn: redis.Redis, keys: KeySpace, campaign: str, stamps: dict[str, int]
) -> None:
    """Every queued trigger (key: its message's stamp) has its pending record, stamped alike."""
    for key, stamp in stamps.items():
        record = json.loads(conn.get(keys.pending(campaign, key)) or b"null")
        assert record is not None, f"{key} queued without its pending record"
        assert record["kwargs"]["idempotency_key"] == key
        assert record["enqueued_at_ms"] == stamp


def test_with_the_broker_in_the_store_each_publish_is_one_script_writing_record_and_message(
    redis_factory: Callable[[], RedisServer],
) -> None:
    server = redis_factory()
    env, queue, keys = _env(server.url)
    campaign = "transport-one-trip"
    with CommandLog(server.url) as log:
        _produce(env, campaign)
    conn = redis.Redis.from_url(server.url)
    # no LPUSH of its own and no TIME per publish: the script pushed every message
    assert log.commands.get("lpush", 0) == 0, dict(log.commands)
    assert log.commands.get("time", 0) <= 2, dict(log.commands)
    # one EVALSHA per publish (plus, at most, one NOSCRIPT retry with SCRIPT LOAD)
    assert 2 * TRIGGERS <= log.commands["evalsha"] <= 2 * TRIGGERS + 1, dict(log.commands)
    stamps = _queued_stamps(conn, queue)
    assert len(stamps) == 2 * TRIGGERS
    # the record and its message carry the same stamp, on the store's clock
    _assert_each_has_its_record(conn, keys, campaign, stamps)
    for key, stamp in stamps.items():
        assert conn.zscore(keys.bucket(0).pending_index, keys.pending(campaign, key)) == stamp
    store_ms = int(conn.time()[0]) * 1000
    assert all(store_ms - 120_000 < s <= store_ms + 1_000 for s in stamps.values())


def test_with_a_broker_of_its_own_the_record_is_written_first_then_the_message_pushed(
    redis_factory: Callable[[], RedisServer],
) -> None:
    store, broker = redis_factory(), redis_factory()
    env, queue, keys = _env(store.url, broker.url)
    campaign = "transport-two-servers"
    with CommandLog(broker.url) as broker_log:
        _produce(env, campaign)
    assert broker_log.commands["lpush"] == 2 * TRIGGERS
    stamps = _queued_stamps(redis.Redis.from_url(broker.url), queue)
    conn = redis.Redis.from_url(store.url)
    assert len(stamps) == 2 * TRIGGERS
    _assert_each_has_its_record(conn, keys, campaign, stamps)


def _app(settings: Settings) -> ClixCelery:
    app = ClixCelery(f"transport-{uuid.uuid4().hex[:6]}")
    app.conf.update(celery_config(settings))
    return app


def test_a_channel_keeps_one_client_until_kombu_replaces_its_pool(
    redis_factory: Callable[[], RedisServer],
) -> None:
    server = redis_factory()
    app = _app(Settings(_env_file=None, redis_url=server.url))  # type: ignore[call-arg]
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        channel._disconnect_pools()  # what kombu does after a connection error
        with channel.conn_or_acquire() as after:
            assert after is not first
            assert after.connection_pool is channel.pool
            assert after.ping()


#: send_task through a producer made by hand on a plain kombu connection.
_PLAIN_KOMBU_PRODUCER = """
import os
from kombu import Connection
from worker import app

with Connection(os.environ["REDIS_URL"]) as conn:
    kwargs = {"campaign_id": "transport-plain", "idempotency_key": "by-hand"}
    app.send_task("trigger_campaign", kwargs=kwargs, producer=conn.Producer())
"""


def test_a_publish_through_a_plain_kombu_producer_still_leaves_a_record(
    redis_factory: Callable[[], RedisServer],
) -> None:
    conn, keys, stamps = _publish_with(redis_factory(), _PLAIN_KOMBU_PRODUCER)
    # kombu's own LPUSH ignored the record handed to it; the record followed
    record = json.loads(conn.get(keys.pending("transport-plain", "by-hand")) or b"null")
    assert record["enqueued_at_ms"] == stamps["by-hand"]


#: send_task into a kombu publish batch (kombu >= 5.7 buffers the LPUSHes).
_BATCH_PRODUCER = """
from worker import app

with app.producer_or_acquire() as producer, producer.batch(max_size=10):
    for i in range(3):
        kwargs = {"campaign_id": "transport-batch", "idempotency_key": f"b{i}"}
        app.send_task("trigger_campaign", kwargs=kwargs, producer=producer)
"""


def test_a_publish_into_a_kombu_batch_writes_its_record_first_then_kombu_pushes(
    redis_factory: Callable[[], RedisServer],
) -> None:
    conn, keys, stamps = _publish_with(redis_factory(), _BATCH_PRODUCER)
    assert sorted(stamps) == ["b0", "b1", "b2"]
    _assert_each_has_its_record(conn, keys, "transport-batch", stamps)


#: A publish made between another's carry and its push (a signal handler that
#: enqueues, say): each push does its own write.
_NESTED_PRODUCER = """
from config.celery_app import app_settings
from tasks.context import producer_ledger
from tasks.pending import ENQUEUED_AT_HEADER
from worker import app

ledger = producer_ledger(app_settings(app))
outer = {"campaign_id": "transport-nested", "idempotency_key": "outer"}
stamp = ledger.carry(outer, "outer-id")
inner = {"campaign_id": "transport-nested", "idempotency_key": "inner"}
app.send_task("trigger_campaign", kwargs=inner)
app.send_task(
    "trigger_campaign", kwargs=outer, task_id="outer-id", headers={ENQUEUED_AT_HEADER: stamp}
)
"""


def test_a_publish_between_a_carry_and_its_push_leaves_both_records(
    redis_factory: Callable[[], RedisServer],
) -> None:
    conn, keys, stamps = _publish_with(redis_factory(), _NESTED_PRODUCER)
    assert sorted(stamps) == ["inner", "outer"]
    _assert_each_has_its_record(conn, keys, "transport-nested", stamps)


#: enqueue_trigger whose script fails part way (the pending index holds a string).
_FAILING_PRODUCER = """
from config import broker_transport
from tasks import enqueue_trigger

try:
    enqueue_trigger("transport-failing", "doomed", task_id="doomed-id", retry=False)
except Exception as exc:
    print("raised", type(exc).__name__)
print("left", sorted(broker_transport._carried.get({})))
"""


def test_a_push_that_fails_raises_queues_nothing_and_leaves_no_write_behind(
    redis_factory: Callable[[], RedisServer],
) -> None:
    server = redis_factory()
    env, queue, keys = _env(server.url)
    conn = redis.Redis.from_url(server.url)
    index = keys.bucket(0).pending_index
    conn.set(index, "not a sorted set")  # the script's ZADD fails (WRONGTYPE)
    out = run_python(env, _FAILING_PRODUCER)
    assert "raised OperationalError" in out  # kombu wraps the script's error
    assert "left []" in out  # the failed publish's write is forgotten, not carried on
    # the record goes first and the message last: nothing was queued without it
    assert conn.llen(queue) == 0
    assert conn.exists(keys.pending("transport-failing", "doomed"))


#: enqueue_trigger in a loop, saying which calls returned and which raised.
_STEADY_PRODUCER = """
import os, sys, time
from tasks import enqueue_trigger

stop, i = sys.argv[1], 0
while not os.path.exists(stop) and i < 20000:
    try:
        enqueue_trigger("transport-cuts", f"c{i}", properties={"n": i})
        print("ok", f"c{i}", flush=True)
    except Exception as exc:
        print("failed", f"c{i}", type(exc).__name__, flush=True)
    i += 1
    time.sleep(0.002)  # a steady producer, not a burst that ends before the first cut
"""


def test_connections_cut_while_enqueueing_never_queue_a_message_without_its_record(
    redis_factory: Callable[[], RedisServer], tmp_path: Path
) -> None:
    server = redis_factory()
    direct = redis.Redis.from_url(server.url)
    stop = tmp_path / "stop"
    with TcpProxy(server.port).start() as proxy:
        # broker and store are one Redis, reached through the proxy: the record
        # rides with every publish, and the cuts land in the middle of them
        env, queue, keys = _env(proxy.url())
        producer = subprocess.Popen(
            [sys.executable, "-c", _STEADY_PRODUCER, str(stop)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # the cuts start once publishes are flowing, whatever the machine's speed
            wait_until(lambda: direct.llen(queue) > 0, 60, "a first queued trigger")
            cuts = 0
            while producer.poll() is None and cuts < 6:
                proxy.cut(0.3)
                cuts += 1
                time.sleep(0.5)
            stop.touch()
            out, err = producer.communicate(timeout=120)
        finally:
            producer.kill()
        assert producer.returncode == 0, err
        assert cuts == 6  # the producer outlived every cut
        assert proxy.connections_cut > 0
        dropped = proxy.connections_cut
    lines = [line.split() for line in out.splitlines()]
    returned = {words[1] for words in lines if words[0] == "ok"}
    assert [words[1] for words in lines] == [f"c{i}" for i in range(len(lines))]
    stamps = _queued_stamps(direct, queue)
    print(
        f"\n{cuts} cuts ({dropped} connections dropped): {len(returned)} enqueues returned, "
        f"{len(lines) - len(returned)} raised; {len(stamps)} triggers queued, each with its record"
    )
    # every enqueue that returned is queued (kombu retried the publish after a cut)
    assert returned <= set(stamps)
    # and nothing is queued without its record, stamped as its message is
    _assert_each_has_its_record(direct, keys, "transport-cuts", stamps)
    direct.close()
