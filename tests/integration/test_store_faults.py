"""The store's Redis drops connections: no trigger is lost, forgotten or sent again for it.

Workers reach the store (``REDIS_URL``) through a :class:`TcpProxy` the test
controls, while the broker stays direct, so the store can be cut at a chosen
moment, such as while Clix is answering a request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, wait_until
from tests.integration.proxy import TcpProxy
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def store_behind_proxy(
    redis_factory: Callable[[], RedisServer],
    own_fleet: Callable[..., Fleet],
) -> Iterator[Callable[..., tuple[Fleet, TcpProxy]]]:
    """Factory: a fleet whose store is reached through a proxy; its broker directly."""
    proxies: list[TcpProxy] = []

    def build(**overrides: str) -> tuple[Fleet, TcpProxy]:
        server = redis_factory()
        proxy = TcpProxy(server.port).start()
        proxies.append(proxy)
        fleet = own_fleet(**overrides)
        # the fleet's own Redis stays the test's direct view; the workers' store
        # (and the result backend) goes through the proxy, their broker does not
        fleet.redis_url = server.url
        fleet.env["REDIS_URL"] = proxy.url()
        fleet.env["CELERY_BROKER_URL"] = server.url
        return fleet, proxy

    yield build
    for proxy in proxies:
        proxy.stop()


def _sending(fleet: Fleet, campaign: str, key: str) -> bool:
    return fleet.store.meta(fleet.scope(campaign, key)).get("sending") == "1"


def _ambiguous(fleet: Fleet) -> int:
    return int(fleet.redis().hget(fleet.keys.stats, "ambiguous_duplicates") or 0)


def test_a_3_s_store_blip_while_clix_accepts_leaves_one_request_and_the_trigger_done(
    store_behind_proxy: Callable[..., tuple[Fleet, TcpProxy]],
    sandbox: SandboxProcess,
    campaign: str,
) -> None:
    fleet, proxy = store_behind_proxy()
    fleet.start_worker(concurrency=1)
    sandbox.script(campaign, {"status": 200, "delay_ms": 2500})
    fleet.send(campaign_id=campaign, idempotency_key="k")
    wait_until(lambda: _sending(fleet, campaign, "k"), 30, "the claim before the request")
    time.sleep(0.5)  # the request is on its way to Clix
    proxy.cut(3.0)  # Clix answers 2 s into the blip

    wait_until(
        lambda: fleet.store.status(fleet.scope(campaign, "k")).state == "done",
        60,
        "the trigger committed once the store is back",
        every_s=0.25,
    )
    requests = sandbox.requests(campaign)
    assert len(requests) == 1
    assert fleet.store.status(fleet.scope(campaign, "k")).trigger_id == requests[0]["trigger_id"]
    assert fleet.dlq.entries() == []
    assert _ambiguous(fleet) == 0
    assert proxy.connections_cut > 0  # the blip did happen to the worker's connections
    # nothing else comes: the message was acknowledged, not requeued
    time.sleep(2)
    assert len(sandbox.requests(campaign)) == 1


def test_store_dropping_connections_every_second_loses_nothing_and_counts_every_resend(
    store_behind_proxy: Callable[..., tuple[Fleet, TcpProxy]],
    own_sandbox: Callable[..., SandboxProcess],
    campaign: str,
) -> None:
    clix = own_sandbox("--latency-ms", "100")
    fleet, proxy = store_behind_proxy(clix=clix)
    keys = [f"k{i}" for i in range(300)]
    fleet.send_many({"campaign_id": campaign, "idempotency_key": key} for key in keys)
    stop = threading.Event()

    def cut_every_second() -> None:
        ends = time.monotonic() + 20
        while not stop.wait(0.7) and time.monotonic() < ends:
            proxy.cut(0.3)

    cutter = threading.Thread(target=cut_every_second, daemon=True)
    fleet.start_worker(concurrency=2)
    fleet.start_worker(concurrency=2)
    cutter.start()
    try:
        wait_until(
            lambda: all(fleet.store.status(fleet.scope(campaign, k)).state == "done" for k in keys),
            180,
            "every trigger done",
            every_s=1,
        )
    finally:
        stop.set()
        cutter.join(timeout=5)
    accepted = [r for r in clix.requests(campaign) if r["status"] == 200]
    duplicates = len(accepted) - len(keys)
    print(f"\n{proxy.connections_cut} connections cut, {duplicates} duplicate sends")
    assert fleet.dlq.entries() == []
    assert duplicates <= _ambiguous(fleet)  # every resend is a counted ambiguous one
