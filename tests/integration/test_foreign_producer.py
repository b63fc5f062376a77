"""The reference producer for other languages (examples/foreign-producer) keeps every promise."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import ROOT, SandboxProcess, cli_json, wait_until

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "examples" / "foreign-producer" / "publish.py"


def _publish(fleet: Fleet, campaign: str, key: str, *more: str) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            campaign,
            key,
            "--store",
            fleet.redis_url,
            "--queue",
            fleet.queue,
            "--prefix",
            fleet.prefix,
            *more,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_trigger_published_by_the_reference_producer_is_delivered_and_its_record_cleared(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = own_fleet()
    out = _publish(fleet, campaign, "ref-1", "--properties", '{"order_id": "ORD-1"}')
    assert cli_json(fleet.env, "status", campaign, "ref-1")["state"] == "queued"
    record = json.loads(fleet.redis().get(fleet.keys.pending(campaign, "ref-1")) or "{}")
    assert record["enqueued_at_ms"] == out["enqueued_at_ms"]
    head = json.loads(fleet.redis().lindex(fleet.queue, -1) or "{}")
    assert head["headers"]["clix_enqueued_at_ms"] == out["enqueued_at_ms"]
    worker = fleet.start_worker(concurrency=1)

    wait_until(
        lambda: fleet.store.status(fleet.scope(campaign, "ref-1")).state == "done", 30, "delivery"
    )
    [request] = sandbox.requests(campaign)
    assert request["body"] == {"properties": {"order_id": "ORD-1"}}
    assert not fleet.redis().exists(fleet.keys.pending(campaign, "ref-1"))
    assert "re-published" not in worker.log()


def test_a_record_whose_message_never_arrived_is_republished_by_the_fleet(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = own_fleet()  # grace 3 s, sweep every 1 s
    fleet.start_worker(concurrency=1)

    _publish(fleet, campaign, "ref-lost", "--record-only")

    wait_until(
        lambda: fleet.store.status(fleet.scope(campaign, "ref-lost")).state == "done",
        30,
        "the reconciler to re-publish the trigger",
    )
    assert len(sandbox.requests(campaign)) == 1
    assert int(fleet.redis().hget(fleet.keys.stats, "reconciled") or 0) == 1
