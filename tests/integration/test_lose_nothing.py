"""Lose nothing even when the broker does: the pending ledger and the reconciler."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection

from tasks import enqueue_trigger
from tasks.trigger import trigger_campaign
from tests.integration.conftest import Fleet
from tests.integration.processes import (
    SandboxProcess,
    WorkerProcess,
    cli,
    cli_json,
    run_python,
    wait_until,
)
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration


def _write_triggers(path: Path, campaign: str, n: int) -> list[str]:
    keys = [f"k{i}" for i in range(n)]
    path.write_text(
        "".join(
            json.dumps({"campaign_id": campaign, "idempotency_key": k, "properties": {"key": k}})
            + "\n"
            for k in keys
        )
    )
    return keys


def _accepted(sandbox: SandboxProcess, campaign: str) -> Counter[str]:
    return Counter(
        r["body"]["properties"]["key"] for r in sandbox.requests(campaign) if r["status"] == 200
    )


def _wait_all(fleet: Fleet, sandbox: SandboxProcess, campaign: str, keys: list[str]) -> None:
    """Wait until every key was accepted; on timeout, say where the missing ones are."""
    try:
        wait_until(
            lambda: set(_accepted(sandbox, campaign)) >= set(keys), 240, "every trigger", every_s=1
        )
    except AssertionError:
        missing = sorted(set(keys) - set(_accepted(sandbox, campaign)))
        conn = fleet.redis()
        states = Counter(fleet.store.status(fleet.scope(campaign, k)).state for k in missing)
        lines = [x for w in fleet.workers for x in w.log().splitlines() if "reconcil" in x]
        exits = [w.proc.poll() for w in fleet.workers]
        quiet = [
            x[:300]
            for w in fleet.workers
            for x in w.log().splitlines()
            if "outcome=" not in x and "received" not in x and "succeeded" not in x
        ]
        raise AssertionError(
            f"{len(missing)} never delivered, e.g. {missing[:5]}; ledger states {dict(states)}; "
            f"pending {conn.zcard(fleet.keys.bucket(0).pending_index)}; "
            f"queue {conn.llen(fleet.queue)}; unacked {conn.hlen('unacked')}; "
            f"dlq {len(fleet.dlq.entries())}; "
            f"reconciler lines {lines[-5:]}; worker exit codes {exits}; "
            f"last worker lines {quiet[-15:]}"
        ) from None


def _ambiguous(fleet: Fleet) -> int:
    return int(fleet.redis().hget(fleet.keys.stats, "ambiguous_duplicates") or 0)


def test_publish_that_fails_after_the_pending_write_is_delivered_by_the_reconciler(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    dead_broker = Connection("redis://127.0.0.1:1/0", connect_timeout=1)
    # kombu raises OperationalError or, from its virtual transport, an IndexError
    with pytest.raises(Exception):  # noqa: B017, PT011
        trigger_campaign.apply_async(
            kwargs={"campaign_id": campaign, "idempotency_key": "lost-publish"},
            producer=dead_broker.Producer(),
            retry=False,
        )
    dead_broker.release()
    # read in this process: the failed publish took ~2 s (redis-py's reconnect
    # retries) and a CLI process ~2 s more to start on a busy machine, past the
    # reconciler's 3 s grace, after which the trigger may already be done
    assert fleet.store.status(fleet.scope(campaign, "lost-publish")).state == "queued"

    wait_until(
        lambda: fleet.store.status(fleet.scope(campaign, "lost-publish")).state == "done",
        30,
        "the reconciler to re-publish the trigger",
    )
    assert len(sandbox.requests(campaign)) == 1
    assert any("re-published" in w.log() for w in fleet.workers)
    assert not fleet.redis().exists(fleet.keys.pending(campaign, "lost-publish"))


def test_reconciler_leaves_a_backlog_alone_and_in_flight_triggers_unsent(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str, tmp_path: Path
) -> None:
    # a request timeout longer than the held answer: it is in flight, not timed out
    fleet = own_fleet(CLIX_REQUEST_TIMEOUT_S="10", CLIX_LEASE_S="20")
    keys = _write_triggers(tmp_path / "t.jsonl", campaign, 300)
    assert cli(fleet.env, "enqueue", "--file", str(tmp_path / "t.jsonl")).returncode == 0
    sandbox.script(campaign, {"status": 200, "delay_ms": 6000})  # one stays in flight 6 s
    time.sleep(4)  # every pending record is now older than the grace period
    worker = fleet.start_worker(concurrency=2)
    wait_until(lambda: set(_accepted(sandbox, campaign)) == set(keys), 120, "the backlog")
    wait_until(lambda: not sandbox.in_flight(campaign), 30, "the held answer")
    time.sleep(1)
    assert set(_accepted(sandbox, campaign).values()) == {1}  # nothing doubled
    assert "re-published" not in worker.log()
    assert fleet.redis().zcard(fleet.keys.bucket(0).pending_index) == 0


def test_broker_restarted_without_persistence_loses_nothing(
    own_fleet: Callable[..., Fleet],
    own_sandbox: Callable[..., SandboxProcess],
    campaign: str,
    tmp_path: Path,
) -> None:
    # 40 ms per answer: the drain takes ~12 s, so the restart lands in its middle
    sandbox = own_sandbox("--latency-ms", "40")
    broker = RedisServer(appendonly=False).start()
    try:
        fleet = own_fleet(clix=sandbox, CELERY_BROKER_URL=broker.url)
        keys = _write_triggers(tmp_path / "t.jsonl", campaign, 600)
        fleet.start_worker(concurrency=2)
        assert cli(fleet.env, "enqueue", "--file", str(tmp_path / "t.jsonl")).returncode == 0
        wait_until(lambda: len(_accepted(sandbox, campaign)) >= 100, 60, "the drain to start")
        port = broker.port
        broker.stop()  # forgets every queued trigger
        lost = len(keys) - len(_accepted(sandbox, campaign))
        assert lost > 100, "the drain finished before the restart: nothing tested"
        broker = RedisServer(port=port, appendonly=False).start()

        _wait_all(fleet, sandbox, campaign, keys)
        doubled = sum(n - 1 for n in _accepted(sandbox, campaign).values())
        assert doubled <= _ambiguous(fleet)
    finally:
        broker.stop()


def _kill_workers_while_draining(
    fleet: Fleet,
    sandbox: SandboxProcess,
    campaign: str,
    keys: list[str],
    *,
    kills: int,
    seed: int,
) -> int:
    """SIGKILL a fresh worker at a random moment, ``kills`` times, then leave one running."""
    rng = random.Random(seed)
    done = 0
    while done < kills and len(_accepted(sandbox, campaign)) < len(keys):
        worker = fleet.start_worker(concurrency=2)
        time.sleep(rng.uniform(0.2, 0.8))
        worker.kill()
        done += 1
    fleet.start_worker(concurrency=2)
    return done


def test_sigkilling_the_worker_main_process_over_and_over_loses_nothing(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str, tmp_path: Path
) -> None:
    fleet = own_fleet(CLIX_VISIBILITY_TIMEOUT_S="10", CLIX_UNACKED_RESTORE_INTERVAL_S="1")
    keys = _write_triggers(tmp_path / "t.jsonl", campaign, 2000)
    assert cli(fleet.env, "enqueue", "--file", str(tmp_path / "t.jsonl")).returncode == 0
    kills = _kill_workers_while_draining(fleet, sandbox, campaign, keys, kills=10, seed=2026)

    _wait_all(fleet, sandbox, campaign, keys)
    doubled = sum(n - 1 for n in _accepted(sandbox, campaign).values())
    print(
        f"\n{kills} SIGKILLs of the main process; 0 of {len(keys)} lost; "
        f"{doubled} ambiguous duplicate(s), {_ambiguous(fleet)} counted"
    )
    assert kills >= 10
    assert doubled <= _ambiguous(fleet)
    assert fleet.dlq.entries() == []


def test_enqueue_trigger_writes_a_pending_record_that_delivery_clears(
    fleet: Fleet, campaign: str
) -> None:
    enqueue_trigger(campaign, "tracked").get(timeout=30)
    assert not fleet.redis().exists(fleet.keys.pending(campaign, "tracked"))
    assert cli_json(fleet.env, "status", campaign, "tracked")["state"] == "done"


# --- every Python publish, every clock ---------------------------------------------------------

#: A Python producer publishing by name through this project's app, as a process of its own.
_SEND_TASK_PRODUCER = """
import sys
from worker import app

campaign, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    kwargs = {"campaign_id": campaign, "idempotency_key": f"k{i}", "properties": {"key": f"k{i}"}}
    app.send_task("trigger_campaign", kwargs=kwargs)
"""


def test_send_task_through_the_project_app_loses_nothing_while_workers_are_sigkilled(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = own_fleet(CLIX_VISIBILITY_TIMEOUT_S="10", CLIX_UNACKED_RESTORE_INTERVAL_S="1")
    keys = [f"k{i}" for i in range(2000)]
    run_python(fleet.env, _SEND_TASK_PRODUCER, campaign, str(len(keys)))
    # every publish wrote its record, whatever the call
    conn = fleet.redis()
    assert conn.zcard(fleet.keys.bucket(0).pending_index) == len(keys)
    assert conn.llen(fleet.queue) == len(keys)
    kills = _kill_workers_while_draining(fleet, sandbox, campaign, keys, kills=6, seed=13)

    _wait_all(fleet, sandbox, campaign, keys)
    doubled = sum(n - 1 for n in _accepted(sandbox, campaign).values())
    print(
        f"\n{kills} SIGKILLs; 0 of {len(keys)} send_task triggers lost; "
        f"{doubled} ambiguous duplicate(s), {_ambiguous(fleet)} counted; "
        f"{int(conn.hget(fleet.keys.stats, 'reconciled') or 0)} re-published by the reconciler"
    )
    assert kills == 6
    assert doubled <= _ambiguous(fleet)
    assert fleet.dlq.entries() == []


#: Enqueue one trigger through enqueue_trigger (the CLI's path) from this process.
_ENQUEUE_ONE = """
import sys
from tasks import enqueue_trigger

enqueue_trigger(sys.argv[1], sys.argv[2])
"""


def test_a_producer_whose_clock_is_60_s_behind_does_not_make_its_queued_trigger_look_lost(
    own_fleet: Callable[..., Fleet], campaign: str, workdir: Path
) -> None:
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.skip("needs libfaketime's faketime command to run a producer with a wrong clock")
    fleet = own_fleet()  # grace 3 s, sweep every 1 s
    run_python(fleet.env, _ENQUEUE_ONE, campaign, "on-time")
    run_python(fleet.env, _ENQUEUE_ONE, campaign, "late-clock", wrap=[faketime, "-f", "-60s"])
    # A worker that consumes another queue: it sweeps the fleet's pending records,
    # and both triggers stay queued in the fleet's queue, the late clock's behind.
    idle = WorkerProcess(workdir, fleet.env, queue=f"{fleet.queue}.idle", concurrency=1)
    fleet.workers.append(idle)

    time.sleep(3 + 5 * 1 + 1)  # the grace period and five sweeps

    conn = fleet.redis()
    assert conn.llen(fleet.queue) == 2  # nothing published twice
    assert int(conn.hget(fleet.keys.stats, "reconciled") or 0) == 0
    assert "re-published" not in idle.log()
    assert fleet.store.status(fleet.scope(campaign, "on-time")).state == "queued"
    assert fleet.store.status(fleet.scope(campaign, "late-clock")).state == "queued"
