"""Workers die (SIGKILL), deliveries outlive the visibility timeout: nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, cli, wait_until

pytestmark = pytest.mark.integration


def _done(fleet: Fleet, campaign: str, key: str) -> str | None:
    status = fleet.store.status(fleet.scope(campaign, key))
    return status.trigger_id if status.state == "done" else None


def _sending(fleet: Fleet, campaign: str, key: str) -> bool:
    return fleet.store.meta(fleet.scope(campaign, key)).get("sending") == "1"


def _ambiguous(fleet: Fleet) -> int:
    return int(fleet.redis().hget(fleet.keys.stats, "ambiguous_duplicates") or 0)


def test_killed_pool_process_is_requeued_and_delivered_once_its_lease_expires(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = own_fleet()
    worker = fleet.start_worker(concurrency=1)
    sandbox.script(campaign, {"status": 200, "delay_ms": 3000})
    fleet.send(campaign_id=campaign, idempotency_key="k")
    wait_until(lambda: _sending(fleet, campaign, "k"), 30, "the request to be in flight")
    pid = worker.proc.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert children, "the prefork pool has a child process"
    for pid in children:
        os.kill(pid, signal.SIGKILL)

    trigger_id = wait_until(lambda: _done(fleet, campaign, "k"), 60, "redelivery", every_s=0.25)
    requests = sandbox.requests(campaign)
    assert trigger_id == requests[-1]["trigger_id"]
    assert len(requests) <= 2
    assert _ambiguous(fleet) >= len(requests) - 1
    assert worker.proc.poll() is None
    assert (
        "WorkerLostError" in worker.log()
        or "exited with" in worker.log()
        or "SIGKILL" in worker.log()
    )
    assert fleet.dlq.entries() == []


def test_a_slow_delivery_ends_before_the_visibility_timeout_so_no_copy_runs_beside_it(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str
) -> None:
    # Clix answers every request slowly with 429: each delivery must give its
    # message back before the broker would hand out a second copy (10 s).
    fleet = own_fleet(
        CLIX_VISIBILITY_TIMEOUT_S="10",
        CLIX_LEASE_S="8",
        CLIX_UNACKED_RESTORE_INTERVAL_S="1",
        CLIX_REQUEST_TIMEOUT_S="2",
        CLIX_BACKOFF_INITIAL_S="0.5",
        CLIX_BACKOFF_MAX_S="1",
        CLIX_RETRY_AFTER_MAX_S="1",
        CLIX_RATE_LIMIT_MAX_WAIT_S="1",
    )
    worker = fleet.start_worker(concurrency=2)
    slow_429 = {"status": 429, "delay_ms": 1500, "headers": {"Retry-After": "1"}}
    sandbox.script(campaign, *[slow_429] * 6)
    task_id = fleet.send(campaign_id=campaign, idempotency_key="slow")

    trigger_id = wait_until(lambda: _done(fleet, campaign, "slow"), 90, "the slow trigger")
    requests = sandbox.requests(campaign)
    assert [r["status"] for r in requests] == [429] * 6 + [200]
    assert requests[-1]["trigger_id"] == trigger_id
    # never two requests at once: each copy started after the previous one ended
    ends = [r["at"] + (1.5 if r["status"] == 429 else 0) for r in requests]
    assert all(requests[i + 1]["at"] >= ends[i] - 0.1 for i in range(len(requests) - 1))
    assert "requeued" in worker.log()  # delivered in several deliveries, one at a time
    assert worker.log().count(f"Task trigger_campaign[{task_id}] received") >= 2
    assert fleet.dlq.entries() == []


def test_message_that_keeps_killing_its_worker_is_dead_lettered_as_redelivery_limit(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = own_fleet(
        CLIX_REDELIVERY_LIMIT="2",
        CLIX_LEASE_S="2",
        CLIX_REQUEST_TIMEOUT_S="1",
        CLIX_RETRY_AFTER_MAX_S="0.5",
        CLIX_RATE_LIMIT_MAX_WAIT_S="0.4",
    )
    worker = fleet.start_worker(concurrency=1)
    sandbox.script(campaign, *[{"status": 200, "delay_ms": 900}] * 2)
    fleet.send(campaign_id=campaign, idempotency_key="poison")
    scope = fleet.scope(campaign, "poison")
    for delivery in (1, 2):
        # each delivery gets as far as sending, then its pool process dies
        wait_until(
            lambda d=delivery: (
                fleet.store.meta(scope).get("deliveries") == str(d)
                and _sending(fleet, campaign, "poison")
            ),
            30,
            f"delivery {delivery} sending",
        )
        pid = worker.proc.pid
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            os.kill(int(child), signal.SIGKILL)

    entry = wait_until(lambda: fleet.store.status(scope).dead_entry_id, 60, "the DLQ entry")
    dead = fleet.dlq.get(entry)
    assert dead is not None
    assert dead["reason"] == "redelivery_limit"
    assert dead["attempts"] == 2  # HTTP requests of the two killed deliveries
    assert "delivered 3 times (limit 2)" in dead["error"]
    assert dead["trigger"] == {"campaign_id": campaign, "idempotency_key": "poison"}
    assert len(sandbox.requests(campaign)) <= 2  # the third delivery sent nothing
    assert worker.proc.poll() is None


def test_sigterm_during_a_batch_finishes_or_returns_every_trigger(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str, tmp_path: Path
) -> None:
    fleet = own_fleet()
    keys = [f"k{i}" for i in range(300)]
    batch = tmp_path / "batch.jsonl"
    lines = [
        {"campaign_id": campaign, "idempotency_key": k, "properties": {"key": k}} for k in keys
    ]
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    first = fleet.start_worker(concurrency=2)
    assert cli(fleet.env, "enqueue", "--file", str(batch)).returncode == 0
    wait_until(lambda: len(sandbox.requests(campaign)) >= 30, 60, "the batch to be under way")
    first.proc.send_signal(signal.SIGTERM)  # warm shutdown
    assert first.proc.wait(timeout=60) == 0
    fleet.start_worker(concurrency=2)

    wait_until(
        lambda: (
            {
                r["body"]["properties"]["key"]
                for r in sandbox.requests(campaign)
                if r["status"] == 200
            }
            == set(keys)
        ),
        120,
        "every trigger",
    )
    accepted = [
        r["body"]["properties"]["key"] for r in sandbox.requests(campaign) if r["status"] == 200
    ]
    assert len(accepted) == len(keys)  # nothing doubled either
    assert fleet.dlq.entries() == []


# --- recovery behind a backlog ----------------------------------------------------------------

#: Triggers queued behind the one whose worker is killed, and Clix's answer time for them:
#: two pool processes drain at most 2 / 0.1 s = 20 triggers/s, so the back of the backlog is
#: reached after 200 s or more, well past the 120 s the recovery must take (a requeued or
#: restored message put behind the backlog would blow the bound).
BACKLOG = 4_000
BACKLOG_LATENCY_MS = 100


def _queue_behind(fleet: Fleet, tmp_path: Path, campaign: str) -> None:
    """Enqueue ``campaign``/first, then BACKLOG triggers of another campaign behind it."""
    assert cli(fleet.env, "enqueue", campaign, "first").returncode == 0
    lines = (
        json.dumps({"campaign_id": f"{campaign}-backlog", "idempotency_key": f"b{i}"}) + "\n"
        for i in range(BACKLOG)
    )
    path = tmp_path / "backlog.jsonl"
    path.write_text("".join(lines))
    done = subprocess.run(
        [sys.executable, "-m", "worker", "enqueue", "--file", str(path)],
        env=fleet.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert fleet.redis().llen(fleet.queue) == BACKLOG + 1


def _republished(fleet: Fleet) -> int:
    return int(fleet.redis().hget(fleet.keys.stats, "reconciled") or 0)


@pytest.fixture
def slow_clix(own_sandbox: Callable[..., SandboxProcess]) -> SandboxProcess:
    """A Clix answering after BACKLOG_LATENCY_MS: the backlog takes minutes to drain."""
    return own_sandbox("--latency-ms", str(BACKLOG_LATENCY_MS))


def test_trigger_whose_pool_process_died_is_requeued_ahead_of_a_backlog_of_minutes(
    own_fleet: Callable[..., Fleet], slow_clix: SandboxProcess, campaign: str, tmp_path: Path
) -> None:
    fleet = own_fleet(fast=False, clix=slow_clix)  # default settings: the recovery promise
    slow_clix.script(campaign, {"status": 200, "delay_ms": 5000})
    _queue_behind(fleet, tmp_path, campaign)
    worker = fleet.start_worker(concurrency=2)
    wait_until(lambda: _sending(fleet, campaign, "first"), 60, "the first trigger in flight")
    pid = worker.proc.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        os.kill(int(child), signal.SIGKILL)  # reject_on_worker_lost requeues the message
    killed_at = time.monotonic()

    wait_until(lambda: _done(fleet, campaign, "first"), 125, "the requeued trigger", every_s=0.5)
    assert time.monotonic() - killed_at < 120
    assert fleet.redis().llen(fleet.queue) > BACKLOG // 2  # it did not wait for the backlog
    # Let the reconciler judge the backlog (older than its grace period) a few times.
    time.sleep(max(0.0, killed_at + 50 - time.monotonic()))
    assert _republished(fleet) == 0
    assert "re-published" not in worker.log()
    requests = slow_clix.requests(campaign)
    assert 1 <= len(requests) <= 2
    # the killed request may have reached Clix: the one allowed duplicate, counted
    assert _ambiguous(fleet) >= len(requests) - 1
    assert fleet.dlq.entries() == []


def test_whole_worker_killed_with_minutes_of_backlog_behind_its_trigger_recovers_within_120_s(
    own_fleet: Callable[..., Fleet], slow_clix: SandboxProcess, campaign: str, tmp_path: Path
) -> None:
    fleet = own_fleet(fast=False, clix=slow_clix)  # default settings: the recovery promise
    slow_clix.script(campaign, {"status": 200, "delay_ms": 5000})
    _queue_behind(fleet, tmp_path, campaign)
    first = fleet.start_worker(concurrency=2)
    wait_until(lambda: _sending(fleet, campaign, "first"), 60, "the first trigger in flight")
    first.kill()
    second = fleet.start_worker(concurrency=2)
    restarted_at = time.monotonic()

    wait_until(lambda: _done(fleet, campaign, "first"), 125, "the killed trigger", every_s=0.5)
    assert time.monotonic() - restarted_at < 120
    assert fleet.redis().llen(fleet.queue) > 0  # the backlog is still draining
    assert _republished(fleet) == 0
    assert "re-published" not in second.log()
    requests = slow_clix.requests(campaign)
    assert 1 <= len(requests) <= 2
    assert _ambiguous(fleet) >= len(requests) - 1
