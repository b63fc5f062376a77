"""Store and broker behind Redis Sentinel: the primary dies mid-drain, nothing is lost.

A primary, a replica and three sentinels are started on free ports
(:mod:`tests.integration.sentinel`); the workers reach the store through
``REDIS_URL=redis+sentinel://...`` and the broker through kombu's
``sentinel://...;sentinel://...`` form, each in a database of its own. The
primary is SIGKILLed while Clix (the sandbox, 40 ms per answer) is still
draining the backlog; the sentinels promote the replica about a second later.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, cli, wait_until
from tests.integration.sentinel import MASTER_NAME, SentinelGroup, sentinel_binary
from tests.integration.test_lose_nothing import _write_triggers

pytestmark = pytest.mark.integration


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    """A primary, a replica and three sentinels (down after 1 s), stopped afterwards."""
    if sentinel_binary() is None:
        pytest.skip("no system redis-server binary to run as a sentinel (apt install redis-server)")
    group = SentinelGroup(down_after_ms=1000).start()
    yield group
    group.stop()


def _accepted(sandbox: SandboxProcess, campaign: str) -> Counter[str]:
    return Counter(
        r["body"]["properties"]["key"] for r in sandbox.requests(campaign) if r["status"] == 200
    )


def test_primary_killed_mid_drain_delivers_every_trigger_with_duplicates_counted(
    sentinel_group: SentinelGroup,
    own_fleet: Callable[..., Fleet],
    own_sandbox: Callable[..., SandboxProcess],
    campaign: str,
    tmp_path: Path,
) -> None:
    clix = own_sandbox("--latency-ms", "40")
    fleet = own_fleet(
        clix=clix,
        REDIS_URL=sentinel_group.url(db=0),
        CELERY_BROKER_URL=sentinel_group.kombu_url(db=1),
        CLIX_BROKER_SENTINEL_MASTER=MASTER_NAME,
        # messages whose acknowledgement died with the primary come back soon
        CLIX_VISIBILITY_TIMEOUT_S="10",
        CLIX_UNACKED_RESTORE_INTERVAL_S="1",
    )
    fleet.redis_url = sentinel_group.direct_url()  # the test's own view of the store
    keys = _write_triggers(tmp_path / "t.jsonl", campaign, 300)
    fleet.start_worker(concurrency=2)
    fleet.start_worker(concurrency=2)
    assert cli(fleet.env, "enqueue", "--file", str(tmp_path / "t.jsonl")).returncode == 0
    wait_until(lambda: len(_accepted(clix, campaign)) >= 60, 60, "the drain to start")

    old_port = sentinel_group.kill_primary()
    left = len(keys) - len(_accepted(clix, campaign))
    assert left > 60, "the drain finished before the failover: nothing tested"
    took_s = sentinel_group.wait_for_failover(old_port)
    fleet.redis_url = sentinel_group.direct_url()

    wait_until(lambda: set(_accepted(clix, campaign)) >= set(keys), 120, "every trigger", every_s=1)
    wait_until(
        lambda: all(fleet.store.status(fleet.scope(campaign, k)).state == "done" for k in keys),
        60,
        "every trigger done in the new primary's ledger",
        every_s=1,
    )
    time.sleep(1)  # nothing else arrives: no copy was left to send again
    accepted = _accepted(clix, campaign)
    doubled = sum(n - 1 for n in accepted.values())
    counted = int(fleet.redis().hget(fleet.keys.stats, "ambiguous_duplicates") or 0)
    print(
        f"\nfailover in {took_s:.1f} s with {left} of {len(keys)} left; "
        f"{doubled} duplicate send(s), {counted} counted as ambiguous"
    )
    assert [w.proc.poll() for w in fleet.workers] == [None, None]  # both rode it out
    assert fleet.dlq.entries() == []
    assert doubled <= counted
