"""A real worker serves /metrics: outcomes summed over its pool, DLQ depth, no ids in labels."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, clean_env, wait_until
from worker.redis_server import free_port

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> tuple[str, Samples]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def _get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _triggers(samples: Samples, outcome: str, reason: str = "none") -> float:
    return _get(samples, "clix_triggers_total", outcome=outcome, reason=reason) or 0.0


def _done(fleet: Fleet, campaign: str, key: str) -> bool:
    return fleet.store.status(fleet.scope(campaign, key)).state == "done"


def _stale_files(directory: Path, workdir: Path) -> None:
    """Counter files of an earlier run in ``directory``: 50 ``sent`` the worker must wipe."""
    code = "from tasks.metrics import count_outcome\nfor _ in range(50): count_outcome('sent')"
    subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
        cwd=workdir,
        check=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("pool", "concurrency", "operator_dir"),
    [("prefork", 2, False), ("solo", 1, True)],
    ids=["prefork-fresh-dir", "solo-operator-dir"],
)
def test_worker_serves_outcomes_dlq_depth_and_no_ids(
    own_fleet: Callable[..., Fleet],
    sandbox: SandboxProcess,
    campaign: str,
    api_key: str,
    tmp_path: Path,
    pool: str,
    concurrency: int,
    operator_dir: bool,
) -> None:
    port = free_port()
    fleet = own_fleet(CLIX_METRICS_PORT=str(port))
    fleet.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if operator_dir:
        directory = tmp_path / "prometheus"
        directory.mkdir()
        _stale_files(directory, tmp_path)
        fleet.env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    fleet.start_worker(pool=pool, concurrency=concurrency)

    _, before = _scrape(port)
    assert _triggers(before, "sent") == 0  # known series exist at zero; stale files wiped
    assert _get(before, "clix_dlq_depth") == 0

    keys = [f"order-{i}-{campaign}" for i in range(5)]
    for key in keys:
        fleet.send(campaign_id=campaign, idempotency_key=key)
    wait_until(lambda: all(_done(fleet, campaign, k) for k in keys), 60, "five triggers sent")
    fleet.send(campaign_id=campaign, idempotency_key=keys[0])  # a duplicate
    rejected = f"{campaign}-rejected"
    sandbox.script(rejected, {"status": 400, "body": {"error": "scripted 400"}})
    fleet.send(campaign_id=rejected, idempotency_key=f"bad-{campaign}")

    def settled() -> tuple[str, Samples] | None:
        text, samples = _scrape(port)
        counted = _triggers(samples, "deduplicated") + _triggers(
            samples, "dead_lettered", "rejected"
        )
        return (text, samples) if counted >= 2 and _get(samples, "clix_dlq_depth") else None

    text, samples = wait_until(settled, 60, "the duplicate and the rejection to be counted")

    assert _triggers(samples, "sent") == 5
    assert _triggers(samples, "deduplicated") == 1
    assert _triggers(samples, "dead_lettered", "rejected") == 1
    assert _triggers(samples, "retried") == 1  # the one failed attempt: the 400
    assert _triggers(samples, "requeued") == 0
    assert _triggers(samples, "other") == 0
    requests = "clix_request_duration_seconds_count"
    assert _get(samples, requests, status="2xx") == 5
    assert _get(samples, requests, status="4xx") == 1
    assert _get(samples, "clix_dlq_depth") == 1
    assert _get(samples, "clix_breaker_state", reason="none") == 0
    assert _get(samples, "clix_queue_depth") == 0
    assert _get(samples, "clix_redis_up") == 1

    for secret in (campaign, rejected, *keys, f"bad-{campaign}", api_key):
        assert secret not in text
    label_values = {value for (_, labels) in samples for _, value in labels}
    allowed = {
        "sent", "deduplicated", "retried", "rate_limited", "dead_lettered", "requeued",
        "ambiguous_duplicate", "breaker_probe", "commit_retry", "commit_failed",
        "bookkeeping_failed", "other", "none", "invalid_payload",
        "rejected", "retries_exhausted", "redelivery_limit", "2xx", "4xx", "429", "5xx",
        "network", "auth", "outage",
    }  # fmt: skip
    buckets = {value for (name, labels) in samples for key, value in labels if key == "le"}
    assert label_values - buckets <= allowed
