"""A Redis Cluster store: the core scenarios with real workers, the broker on a plain Redis.

The store is a 3-primary cluster started by the test (``redis-cli --cluster
create``), ``REDIS_URL=redis+cluster://...``; the broker is a plain
``redis-server`` (a cluster cannot be Celery's broker). Results are off on a
cluster store, so outcomes are read from the ledger, the sandbox and the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, cli, cli_json, wait_until
from tests.integration.redis_cluster import RedisClusterServers
from tests.integration.test_lose_nothing import _accepted, _write_triggers

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster_fleet(
    own_fleet: Callable[..., Fleet], redis_cluster: RedisClusterServers
) -> Callable[..., Fleet]:
    """A fleet whose store is the cluster and whose broker is a plain Redis of its own."""

    def build(**overrides: Any) -> Fleet:
        fleet = own_fleet(**overrides)
        fleet.env.update(REDIS_URL=redis_cluster.url, CELERY_BROKER_URL=fleet.redis_url)
        fleet.redis_url = redis_cluster.url
        return fleet

    return build


def _enqueue(fleet: Fleet, path: Path) -> None:
    done = cli(fleet.env, "enqueue", "--file", str(path))
    assert done.returncode == 0, done.stderr


def _nodes_holding(cluster: RedisClusterServers, prefix: str) -> int:
    holding = 0
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as conn:
            holding += any(True for _ in conn.scan_iter(match=f"{prefix}:*", count=1000))
    return holding


def test_cluster_store_delivers_once_dedupes_retries_and_dead_letters(
    cluster_fleet: Callable[..., Fleet],
    redis_cluster: RedisClusterServers,
    sandbox: SandboxProcess,
    campaign: str,
    tmp_path: Path,
) -> None:
    fleet = cluster_fleet()
    fleet.start_worker(concurrency=4)
    keys = _write_triggers(tmp_path / "t.jsonl", campaign, 150)
    _enqueue(fleet, tmp_path / "t.jsonl")
    _enqueue(fleet, tmp_path / "t.jsonl")  # every key a second time: deduplicated
    flaky, rejected = f"{campaign}-flaky", f"{campaign}-bad"
    sandbox.script(flaky, {"status": 503})
    sandbox.script(rejected, {"status": 400, "body": {"error": "scripted 400"}})
    _write_triggers(tmp_path / "f.jsonl", flaky, 1)
    _write_triggers(tmp_path / "b.jsonl", rejected, 1)
    _enqueue(fleet, tmp_path / "f.jsonl")
    _enqueue(fleet, tmp_path / "b.jsonl")

    def delivered() -> bool:
        return len(_accepted(sandbox, campaign)) == len(keys) and bool(_accepted(sandbox, flaky))

    wait_until(delivered, 90, "every trigger delivered", every_s=0.5)
    wait_until(lambda: fleet.dlq.depth() == 1, 30, "the rejected trigger in the DLQ")
    store = fleet.store
    wait_until(
        lambda: all(store.status(fleet.scope(campaign, k)).state == "done" for k in keys),
        30,
        "every trigger committed (its copies acknowledged as duplicates)",
    )
    time.sleep(1.0)  # the second copies of the last keys are answered by now

    assert set(_accepted(sandbox, campaign).values()) == {1}  # once per key
    assert [r["status"] for r in sandbox.requests(flaky)] == [503, 200]
    [entry] = cli_json(fleet.env, "dlq", "list")
    assert (entry["campaign_id"], entry["reason"], entry["status_code"]) == (
        rejected,
        "rejected",
        400,
    )
    assert cli_json(fleet.env, "status", campaign, "k7")["state"] == "done"
    assert cli_json(fleet.env, "status", rejected, "k0")["state"] == "dead_lettered"
    assert fleet.redis().zcard(fleet.keys.bucket_for(campaign, "k7").pending_index) == 0
    assert _nodes_holding(redis_cluster, fleet.prefix) > 1


def test_cluster_store_loses_nothing_when_a_worker_is_sigkilled_mid_drain(
    cluster_fleet: Callable[..., Fleet],
    own_sandbox: Callable[..., SandboxProcess],
    campaign: str,
    tmp_path: Path,
) -> None:
    sandbox = own_sandbox("--latency-ms", "20")  # a drain long enough to be cut
    fleet = cluster_fleet(
        clix=sandbox, CLIX_VISIBILITY_TIMEOUT_S="10", CLIX_UNACKED_RESTORE_INTERVAL_S="1"
    )
    keys = _write_triggers(tmp_path / "t.jsonl", campaign, 300)
    _enqueue(fleet, tmp_path / "t.jsonl")
    victim = fleet.start_worker(concurrency=4)
    wait_until(lambda: len(_accepted(sandbox, campaign)) >= 20, 60, "the drain to start")
    victim.kill()
    cut = len(_accepted(sandbox, campaign))
    fleet.start_worker(concurrency=4)
    wait_until(
        lambda: set(_accepted(sandbox, campaign)) >= set(keys),
        120,
        "every trigger after the SIGKILL",
        every_s=0.5,
    )
    doubled = sum(n - 1 for n in _accepted(sandbox, campaign).values())
    ambiguous = int(fleet.redis().hget(fleet.keys.stats, "ambiguous_duplicates") or 0)
    print(f"\nSIGKILL after {cut} of {len(keys)}; {doubled} ambiguous duplicate(s)")
    assert cut < len(keys), "the drain finished before the kill: nothing tested"
    assert doubled <= ambiguous
    assert fleet.dlq.depth() == 0


def _cluster_finding(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = cli(env, "check", "--no-worker", "--json")
    findings = {f["name"]: f for f in json.loads(done.stdout)["findings"]}
    return done.returncode, findings["redis_cluster"]


def test_check_reports_the_cluster_and_refuses_uncovered_slots(
    cluster_fleet: Callable[..., Fleet], redis_cluster: RedisClusterServers
) -> None:
    fleet = cluster_fleet()
    code, finding = _cluster_finding(fleet.env)
    assert finding["ok"], finding
    assert "16384/16384 slots covered, 3 primaries" in finding["detail"]

    node = redis_cluster.nodes[0]
    with redis.Redis(port=node.port) as conn:
        conn.execute_command("CLUSTER", "DELSLOTS", 0)
    try:
        code, finding = _cluster_finding(fleet.env)
        assert code == 1
        assert not finding["ok"]
        assert "16383/16384" in finding["detail"]
    finally:
        with redis.Redis(port=node.port) as conn:
            conn.execute_command("CLUSTER", "ADDSLOTS", 0)
        wait_until(lambda: RedisClusterServers._ok(node), 30, "the cluster back to ok")
