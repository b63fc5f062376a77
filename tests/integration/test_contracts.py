"""Trigger plans enforced at the producer and the worker; PII kept out of sight."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import (
    ROOT,
    SandboxProcess,
    _stop,
    cli,
    cli_json,
    wait_until,
)
from worker.redis_server import free_port

pytestmark = pytest.mark.integration

SAMPLE_PLAN = ROOT / "examples" / "store-pickup" / ".clix" / "api-trigger-plan.json"
CUSTOMER = "Jane Qwertyname"  # a pii value to look for


@pytest.fixture
def plan_campaign(tmp_path: Path, campaign: str) -> tuple[str, Path]:
    """The store-pickup sample plan, for a campaign id of this test only."""
    plan = json.loads(SAMPLE_PLAN.read_text())
    plan["campaign_id"] = campaign
    folder = tmp_path / ".clix"
    folder.mkdir()
    (folder / "api-trigger-plan.json").write_text(json.dumps(plan))
    return campaign, folder


def _trigger(campaign: str, key: str, **properties: object) -> dict[str, object]:
    props = {
        "store_location": "San Francisco",
        "order_id": "ORD-1",
        "item_count": 3,
        "customer_name": CUSTOMER,
        **properties,
    }
    return {
        "campaign_id": campaign,
        "idempotency_key": key,
        "audience": {"broadcast": True},
        "properties": props,
    }


def test_missing_dynamic_filter_key_is_refused_by_the_producer_and_dead_lettered_by_the_worker(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, plan_campaign: tuple[str, Path]
) -> None:
    campaign, plans = plan_campaign
    fleet = own_fleet(CLIX_PLANS=str(plans))
    fleet.start_worker()
    refused = cli(
        fleet.env,
        "enqueue",
        campaign,
        "k1",
        "--broadcast",
        "-p",
        "order_id=ORD-1",
        "-p",
        "item_count=3",
    )
    assert refused.returncode == 1
    assert "properties.store_location" in refused.stderr
    assert "dynamic filter key" in refused.stderr

    kwargs = _trigger(campaign, "k2")
    del kwargs["properties"]["store_location"]  # type: ignore[attr-defined]
    fleet.send(**kwargs)
    entry = wait_until(lambda: fleet.dlq.entries(), 30, "the DLQ entry")[0]
    assert entry["reason"] == "invalid_payload"
    assert "properties.store_location" in entry["error"]
    assert sandbox.requests(campaign) == []


def test_pii_reaches_clix_intact_and_shows_nowhere_else(
    own_fleet: Callable[..., Fleet],
    sandbox: SandboxProcess,
    plan_campaign: tuple[str, Path],
    workdir: Path,
) -> None:
    campaign, plans = plan_campaign
    fleet = own_fleet(CLIX_PLANS=str(plans))
    worker = fleet.start_worker()
    flower_port = free_port()
    flower_log = (workdir / f"flower-{flower_port}.log").open("wb")
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "flower",
            f"--port={flower_port}",
            "--address=127.0.0.1",
        ],
        env={**fleet.env, "FLOWER_BASIC_AUTH": "ops:s3cret"},
        stdout=flower_log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{flower_port}"
        wait_until(lambda: _answers(base), 30, "Flower")
        sandbox.script(campaign, {"status": 200}, {"status": 400, "body": {"error": "no"}})
        # our producer (enqueue_trigger behind the CLI) publishes a redacted kwargsrepr
        for key in ("ok", "rejected"):
            enqueued = cli(
                fleet.env,
                "enqueue",
                campaign,
                key,
                "--broadcast",
                "-p",
                "store_location=San Francisco",
                "-p",
                "order_id=ORD-1",
                "-p",
                "item_count=3",
                "-p",
                f"customer_name={CUSTOMER}",
            )
            assert enqueued.returncode == 0, enqueued.stderr
            assert CUSTOMER not in enqueued.stdout + enqueued.stderr
            if key == "ok":
                wait_until(
                    lambda: fleet.store.status(fleet.scope(campaign, "ok")).state == "done",
                    30,
                    "delivery",
                )
        wait_until(lambda: fleet.dlq.entries(), 30, "the DLQ entry")

        [sent] = [r for r in sandbox.requests(campaign) if r["status"] == 200]
        assert sent["body"]["properties"]["customer_name"] == CUSTOMER  # intact for Clix

        assert httpx.get(f"{base}/api/tasks", timeout=10).status_code == 401
        tasks = wait_until(lambda: _flower_tasks(base, campaign), 90, "Flower listing the task")
        assert any(t.get("name") == "trigger_campaign" for t in tasks.values())
        assert CUSTOMER not in json.dumps(tasks)
        # ...while Flower does show the kwargs summary: ids and property names
        assert any("customer_name" in str(t.get("kwargs")) for t in tasks.values())

        listing = cli(fleet.env, "dlq", "list", "--json")
        assert listing.returncode == 0
        assert CUSTOMER not in listing.stdout
        assert "[redacted]" in listing.stdout
        entry_id = json.loads(listing.stdout)[0]["id"]
        assert CUSTOMER not in cli(fleet.env, "dlq", "show", entry_id).stdout
        shown = cli_json(fleet.env, "dlq", "show", entry_id, "--show-pii")
        assert shown["trigger"]["properties"]["customer_name"] == CUSTOMER
        time.sleep(0.5)
        assert CUSTOMER not in worker.log()
    finally:
        _stop(flower)
        flower_log.close()


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthcheck", timeout=2).status_code in (200, 401)
    except httpx.TransportError:
        return False


def _flower_tasks(base: str, campaign: str) -> dict[str, dict[str, object]] | None:
    reply = httpx.get(f"{base}/api/tasks", auth=("ops", "s3cret"), timeout=10)
    assert reply.status_code == 200
    tasks = {k: v for k, v in reply.json().items() if campaign in json.dumps(v)}
    done = [t for t in tasks.values() if t.get("state") in ("SUCCESS", "FAILURE")]
    return tasks if len(done) >= 2 else None
