"""Store and broker behind Redis Sentinel: the primary dies mid-drain, nothing is lost.

A primary, a replica and three sentinels are started on free ports
(:mod:`tests.integration.sentinel`); the workers reach the store through
``REDIS_URL=redis+sentinel://...`` and the broker through kombu's
``sentinel://...;sentinel://...`` form, each in a database of its own. The
primary is SIGKILLed while Clix (the sandbox, 40 ms per answer) is still
draining the backlog; the sentinels promote the replica about a second later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from config.connections import store_client
from config.keys import KeySpace, Scope
from config.settings import Settings
from tasks.idempotency import IdempotencyStore, new_owner
from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, clean_env, cli, wait_until
from tests.integration.sentinel import MASTER_NAME, SentinelGroup, sentinel_binary
from tests.integration.test_lose_nothing import _accepted, _write_triggers

pytestmark = pytest.mark.integration


def _group(*, appendonly: bool = False) -> SentinelGroup:
    if sentinel_binary() is None:
        pytest.skip("no system redis-server binary to run as a sentinel (apt install redis-server)")
    return SentinelGroup(down_after_ms=1000, appendonly=appendonly).start()


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    """A primary, a replica and three sentinels (down after 1 s), stopped afterwards."""
    group = _group()
    yield group
    group.stop()


@pytest.fixture(scope="module")
def steady_group() -> Iterator[SentinelGroup]:
    """A Sentinel group no test of this module fails over (shared: it is only read)."""
    group = _group(appendonly=True)  # as check requires of a production store
    group.wait_until_watched()
    yield group
    group.stop()


def test_primary_killed_mid_drain_delivers_dedupes_retries_dead_letters_and_survives_a_sigkill(
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
    keys = _write_triggers(tmp_path / "t.jsonl", campaign, 400)
    # the default pool (threads): a delivery ending after the broker connection was
    # replaced must not stop its worker
    fleet.start_worker(pool="threads", concurrency=4)
    fleet.start_worker(pool="threads", concurrency=4)
    # the core scenarios ride through the failover too: one trigger that needs a
    # retry, one that Clix rejects, and (below) every key again after it
    flaky, rejected = f"{campaign}-flaky", f"{campaign}-bad"
    clix.script(flaky, {"status": 503})
    clix.script(rejected, {"status": 400, "body": {"error": "scripted 400"}})
    for other in (flaky, rejected):
        _write_triggers(tmp_path / f"{other}.jsonl", other, 1)
        assert cli(fleet.env, "enqueue", "--file", str(tmp_path / f"{other}.jsonl")).returncode == 0
    assert cli(fleet.env, "enqueue", "--file", str(tmp_path / "t.jsonl")).returncode == 0
    wait_until(lambda: len(_accepted(clix, campaign)) >= 60, 60, "the drain to start")

    old_port = sentinel_group.kill_primary()
    left = len(keys) - len(_accepted(clix, campaign))
    assert left > 100, "the drain finished before the failover: nothing tested"
    took_s = sentinel_group.wait_for_failover(old_port)
    fleet.redis_url = sentinel_group.direct_url()
    # and a worker dies the hard way on the new primary: a fresh one takes over
    fleet.workers[0].kill()
    fleet.start_worker(pool="threads", concurrency=4)
    # every key once more, against the new primary's ledger: deduplicated, not sent
    assert cli(fleet.env, "enqueue", "--file", str(tmp_path / "t.jsonl")).returncode == 0

    wait_until(lambda: set(_accepted(clix, campaign)) >= set(keys), 120, "every trigger", every_s=1)
    wait_until(lambda: bool(_accepted(clix, flaky)), 60, "the retried trigger", every_s=1)
    wait_until(lambda: len(fleet.dlq.entries()) == 1, 60, "the rejected trigger in the DLQ")
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
    assert [w.proc.poll() for w in fleet.workers[1:]] == [None, None]  # they rode it out
    assert [e["reason"] for e in fleet.dlq.entries()] == ["rejected"]
    assert [r["status"] for r in clix.requests(flaky)] == [503, 200]
    assert doubled <= counted


def test_check_reports_the_sentinel_primary_and_refuses_an_unknown_master_name(
    steady_group: SentinelGroup,
) -> None:
    env = clean_env(REDIS_URL=steady_group.url())
    done = cli(env, "check", "--no-worker")
    primary_port = steady_group.master_port()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok  127.0.0.1:{primary_port} (master {MASTER_NAME!r}" in done.stdout
    assert "3/3 sentinels know it, 1 replica(s) up" in done.stdout

    wrong = clean_env(REDIS_URL=steady_group.url().replace(MASTER_NAME, "typo"))
    refused = cli(wrong, "check", "--no-worker")
    assert refused.returncode == 1
    assert "no sentinel knows master 'typo'" in refused.stdout


def test_commit_with_wait_returns_once_the_replica_has_it(
    steady_group: SentinelGroup, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=steady_group.url(), _env_file=None)
    keys = KeySpace("waittest")
    store = IdempotencyStore(
        store_client(settings), keys, lease_ms=5000, ttl_s=60, commit_replicas=1
    )
    scope, owner = Scope("p", "c", "k"), new_owner("task")
    assert store.claim(scope, owner).state.value == "claimed"
    # as on a freshly promoted primary: the commit script is not in its cache
    redis.Redis.from_url(steady_group.direct_url()).script_flush()
    with caplog.at_level(logging.WARNING, logger="clix.trigger"):
        assert store.commit(scope, owner, "trigger-1")
    assert steady_group.replica_client().get(keys.done(scope)) == b"trigger-1"
    assert "replicas within" not in caplog.text  # the replica confirmed in time

    unreachable = IdempotencyStore(
        store_client(settings), keys, lease_ms=5000, ttl_s=60, commit_replicas=2, commit_wait_ms=20
    )
    scope2, owner2 = Scope("p", "c", "k2"), new_owner("task")
    unreachable.claim(scope2, owner2)
    with caplog.at_level(logging.WARNING, logger="clix.trigger"):
        assert unreachable.commit(scope2, owner2, "trigger-2")  # committed all the same
        scope3, owner3 = Scope("p", "c", "k3"), new_owner("task")
        unreachable.claim(scope3, owner3)
        assert unreachable.commit(scope3, owner3, "trigger-3")
    assert caplog.text.count("commit reached 1 of 2 replicas within 20 ms") == 1  # said once
