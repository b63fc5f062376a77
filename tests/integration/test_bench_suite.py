"""The benchmark suite runs end to end at a smoke size and reports every section.

No figure is judged here (timings belong in docs/BENCHMARKS.md, not in
assertions): only that each section is there and its values are sane.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.processes import ROOT, clean_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--no-docs", "--out", str(out)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def _rate_is_sane(point: dict[str, Any]) -> None:
    assert 0 <= point["triggers_per_s"] < 100_000
    assert point["requests"] <= point["backlog"]
    assert point["rss_mb"]
    assert all(0 < mb < 10_000 for mb in point["rss_mb"])


def test_suite_reports_every_section(results: dict[str, Any]) -> None:
    for section in (
        "machine",
        "default",
        "baseline",
        "flower",
        "pools",
        "latency",
        "redis",
        "enqueue",
        "sizing",
        "rss",
    ):
        assert section in results, section
    assert results["quick"] is True
    assert results["machine"]["cores"] >= 1


def test_default_worker_delivers_at_every_latency_and_its_ratio_is_reported(
    results: dict[str, Any],
) -> None:
    default = results["default"]
    assert default["command"] == "celery -A worker worker --loglevel=INFO"
    assert {p["latency_ms"] for p in default["points"]} >= {0, 50}
    for point in default["points"]:
        _rate_is_sane(point)
        assert point["accepted"] > 0
    assert 0 < default["ratio_50ms_to_0ms"] < 10
    # each 50 ms run is compared with the 0 ms run of its rotation
    ratios = default["run_ratios_50ms_to_0ms"]
    assert default["ratio_50ms_to_0ms"] == round(statistics.median(ratios), 2)


def test_bare_baseline_runs_on_the_same_pool_and_concurrency(results: dict[str, Any]) -> None:
    baseline = results["baseline"]
    assert baseline["pool"] == results["default"]["pool"]
    assert baseline["concurrency"] == results["default"]["concurrency"]
    assert baseline["bare"]["accepted"] > 0
    assert 0 < baseline["ratio"] < 10
    # taken in rotation with the default worker: one ratio per headline run
    assert len(baseline["pair_ratios"]) == len(baseline["bare"]["runs"])
    assert baseline["ratio"] == round(statistics.median(baseline["pair_ratios"]), 2)
    assert baseline["per_pool"]
    assert all(row["bare_per_s"] > 0 for row in baseline["per_pool"])


def test_worker_and_bare_task_are_also_measured_draining_at_once(results: dict[str, Any]) -> None:
    side = results["baseline"]["side_by_side"]
    assert side["pool"] == results["baseline"]["pool"]
    for run in side["runs"]:
        # the rates are over the time both still had work queued
        assert run["window_s"] > 0
        for app in ("bare", "clix"):
            assert run[app]["triggers_per_s"] > 0
            assert run[app]["cores"] > 0
        assert run["ratio"] == round(
            run["clix"]["triggers_per_s"] / run["bare"]["triggers_per_s"], 3
        )
    assert side["ratio"] == round(statistics.median(run["ratio"] for run in side["runs"]), 2)


def test_the_default_worker_is_measured_with_flower_watching(results: dict[str, Any]) -> None:
    flower = results["flower"]
    assert flower["without_per_s"] == results["baseline"]["clix_per_s"]
    assert flower["with_per_s"] > 0
    assert 0 < flower["ratio"] < 10
    assert flower["flower_cpu_ms_per_trigger"] > 0  # Flower did decode the task events


def test_every_pool_is_measured_at_each_latency(results: dict[str, Any]) -> None:
    measured = {(p["pool"], p["latency_ms"]) for p in results["pools"]}
    for pool in ("prefork", "threads"):
        assert {(pool, 0), (pool, 50)} <= measured
    for point in results["pools"]:
        _rate_is_sane(point)
        if point["pool"] in ("prefork", "threads"):
            assert point["accepted"] > 0
    prefork = [p for p in results["pools"] if p["pool"] == "prefork"]
    assert all(len(p["rss_mb"]) >= 1 + p["concurrency"] for p in prefork)  # main + children


def test_latency_percentiles_are_ordered(results: dict[str, Any]) -> None:
    for row in results["latency"]:
        assert row["triggers"] > 0
        assert 0 <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]


def test_redis_cost_separates_the_store_from_the_broker(results: dict[str, Any]) -> None:
    redis = results["redis"]
    for side in ("producer", "worker"):
        for server in ("store", "broker"):
            cell = redis[side][server]
            assert cell["commands"]["total"] > 0
            assert 0 < cell["round_trips"]["total"] <= cell["commands"]["total"] + 1
    assert "evalsha" in redis["worker"]["store"]["commands"]["by_command"]  # our scripts
    assert "lpush" in redis["producer"]["broker"]["commands"]["by_command"]  # the message
    assert redis["bytes_per_remembered_trigger"] > 0
    assert redis["bytes_per_result"] > 0  # the commit stored the Celery result
    assert redis["bytes_per_queued_trigger"]["broker"] > 0
    # the claim and the commit, each a script; a process's first call of a
    # script may be repeated once after loading it (NOSCRIPT)
    assert 2 <= redis["worker_store_trips_per_trigger"] <= 2.5


def test_producer_paths_are_all_timed_with_the_broker_in_the_store_and_apart(
    results: dict[str, Any],
) -> None:
    enqueue = results["enqueue"]
    for run in (enqueue, enqueue["broker_apart"]):
        assert set(run["per_s"]) == {"apply_async", "enqueue_trigger", "enqueue_many"}
        assert all(rate > 0 for rate in run["per_s"].values())
        per_s = run["per_s"]
        ratio = per_s["enqueue_trigger"] / per_s["apply_async"]
        assert abs(run["enqueue_trigger_vs_apply_async"] - ratio) <= 0.01


def test_sizing_runs_several_workers(results: dict[str, Any]) -> None:
    sizing = results["sizing"]
    assert any(run["workers"] > 1 for run in sizing["runs"])
    assert sizing["machine_per_s"] > 0
    assert sizing["machines_for_clix_limit"] >= 1
