"""docs/BENCHMARKS.md and its plot, from the suite's JSON.

    python -m bench.report docs/benchmarks.json   # re-render without re-running

The plot (docs/benchmarks.png, bench/plot.py) needs matplotlib (the ``bench``
extra); without it the page is written and says the plot is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.plot import plot
from config.settings import Settings

PLOT_NAME = "benchmarks.png"


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value}{suffix}"


#: the defaults of CLIX_IDEMPOTENCY_TTL_S and CLIX_RESULT_TTL_S, which the suite runs with
IDEMPOTENCY_TTL_S = int(Settings.model_fields["clix_idempotency_ttl_s"].default)
RESULT_TTL_S = int(Settings.model_fields["clix_result_ttl_s"].default)


def _hours(seconds: int) -> str:
    return f"{seconds / 3600:g} h"


def _day_average(remembered: float | None, per_result: float | None) -> float | None:
    """Bytes per trigger in the store at steady state: results live a fraction of the day."""
    if remembered is None or per_result is None:
        return None
    return round(remembered + per_result * RESULT_TTL_S / IDEMPOTENCY_TTL_S)


def _verdict(value: float | None, good: bool) -> str:
    return "n/a" if value is None else ("met" if good else "**missed**")


def _redis_section(redis: dict[str, Any], queued: Any, remembered: Any) -> list[str]:
    lines = ["", "## Redis per trigger", ""]
    if "error" in redis:
        return [*lines, f"Not measured: {redis['error']}"]
    lines += [
        f"{redis['triggers']} triggers published with the bulk path, then drained by the "
        "README's worker. Broker and store are separate servers. *Commands*: "
        "`INFO commandstats` (counts commands inside Lua scripts and MULTI/EXEC one by one); "
        "*round trips*: `MONITOR` (client commands, a MULTI ... EXEC block once, "
        "script-internal commands not counted). The store also holds Celery's results.",
        "",
        "| side | server | round trips | commands | by command (commandstats) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for side in ("producer", "worker"):
        for server in ("store", "broker"):
            cell = redis[side][server]
            top = ", ".join(
                f"{name} {count:g}"
                for name, count in list(cell["commands"]["by_command"].items())[:8]
            )
            lines.append(
                f"| {side} | {server} | {_fmt(cell['round_trips']['total'])} | "
                f"{_fmt(cell['commands']['total'])} | {top} |"
            )
    lines += ["", "Round trips by key (MONITOR, per trigger; ids folded to `*`):", ""]
    for side in ("producer", "worker"):
        for server in ("store", "broker"):
            by_key = redis[side][server]["round_trips"].get("by_key", {})
            shown = "; ".join(f"`{k}` {v:g}" for k, v in list(by_key.items())[:6])
            lines.append(f"- {side}, {server}: {shown}")
    lines += [
        "",
        f"Bytes: a queued trigger {_fmt(queued)} (store "
        f"{_fmt(redis['bytes_per_queued_trigger']['store'])}, broker "
        f"{_fmt(redis['bytes_per_queued_trigger']['broker'])}); a remembered (delivered) "
        f"trigger {_fmt(remembered)} in the store for its done record, plus "
        f"{_fmt(redis.get('bytes_per_result'))} for its Celery result while that is kept "
        "(`MEMORY USAGE` of every key, before and after).",
    ]
    return lines


def _flower_section(flower: dict[str, Any]) -> list[str]:
    lines = ["", "## Flower attached (0 ms)", ""]
    if not flower or "error" in flower:
        return [*lines, f"Not measured: {flower.get('error', 'not run')}"]
    return [
        *lines,
        "The README's worker with `celery -A worker flower` watching its task events, on the "
        "same cores (Flower decodes every event); without: the first table's 0 ms point.",
        "",
        "| | triggers/s | runs |",
        "| --- | --- | --- |",
        f"| without Flower | {_fmt(flower['without_per_s'])} | |",
        f"| with Flower | {_fmt(flower['with_per_s'])} | "
        f"{', '.join(_fmt(r) for r in flower['runs'])} |",
        "",
        f"With / without: {_fmt(flower['ratio'])}; Flower's own CPU: "
        f"{_fmt(flower['flower_cpu_ms_per_trigger'])} ms per trigger.",
    ]


def _producer_section(enqueue: dict[str, Any]) -> list[str]:
    lines = ["", "## Producer", ""]
    if "error" in enqueue:
        return [*lines, f"Not measured: {enqueue['error']}"]
    per_s = enqueue["per_s"]
    apart = enqueue.get("broker_apart") or {}
    apart_s = apart.get("per_s") or {}
    return [
        *lines,
        f"{enqueue['triggers']} triggers per round, best of {enqueue['rounds']} rounds, one "
        "process (the typical trigger: one target, two properties). With the broker in the "
        "store's Redis (the default) a publish writes its pending record in the script that "
        "pushes the message; with a broker of its own the record is a round trip before it.",
        "",
        "| path | broker = store (default) | broker apart |",
        "| --- | --- | --- |",
        "| bare `apply_async` (no validation, no pending record) | "
        f"{_fmt(per_s['apply_async'])} | {_fmt(apart_s.get('apply_async'))} |",
        f"| `enqueue_trigger` | {_fmt(per_s['enqueue_trigger'])} | "
        f"{_fmt(apart_s.get('enqueue_trigger'))} |",
        f"| `enqueue_many` (bulk) | {_fmt(per_s['enqueue_many'])} | "
        f"{_fmt(apart_s.get('enqueue_many'))} |",
        f"| `enqueue_trigger` / bare `apply_async` | "
        f"{_fmt(enqueue.get('enqueue_trigger_vs_apply_async'))} | "
        f"{_fmt(apart.get('enqueue_trigger_vs_apply_async'))} |",
    ]


def _side_by_side_section(side: dict[str, Any]) -> list[str]:
    """Both apps draining at once (bench/side_by_side.py): the drift-free second opinion."""
    if not side.get("runs"):
        return ["", f"Side by side: not measured ({side.get('error', 'no runs')})."]
    lines = [
        "",
        "Side by side: the worker and the bare task draining their own backlogs at the "
        "same time on the same cores, rates over the same window (bench/side_by_side.py). "
        "No drift between runs enters it; the two compete for the cores, so the rates are "
        f"lower than alone. Worker / bare, median of {len(side['runs'])} runs: "
        f"**{_fmt(side['ratio'])}**.",
        "",
        "| run | worker | bare | ratio | worker cores / ms per trigger "
        "| bare cores / ms per trigger |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for number, run in enumerate(side["runs"], start=1):
        clix, bare = run["clix"], run["bare"]
        lines.append(
            f"| {number} | {_fmt(clix['triggers_per_s'])} | {_fmt(bare['triggers_per_s'])} | "
            f"{_fmt(run['ratio'])} | {_fmt(clix['cores'])} / {_fmt(clix['cpu_ms_per_trigger'])} "
            f"| {_fmt(bare['cores'])} / {_fmt(bare['cpu_ms_per_trigger'])} |"
        )
    return lines


def markdown(results: dict[str, Any], has_plot: bool) -> str:
    """The whole page."""
    m = results["machine"]
    default, baseline, redis = results["default"], results["baseline"], results["redis"]
    enqueue, sizing = results["enqueue"], results["sizing"]
    by_ms = {p["latency_ms"]: p for p in default["points"]}
    ratio_50 = default.get("ratio_50ms_to_0ms")
    ratio_bare = baseline.get("ratio")
    redis_ok = "error" not in redis
    all_trips = redis["worker"]["store"]["round_trips"]["total"] if redis_ok else None
    own_trips = redis.get("worker_store_trips_per_trigger")
    remembered = redis.get("bytes_per_remembered_trigger")
    per_result = redis.get("bytes_per_result")
    day_average = _day_average(remembered, per_result)
    queued = sum(redis["bytes_per_queued_trigger"].values()) if redis_ok else None
    one_vs_bare = enqueue.get("enqueue_trigger_vs_apply_async")
    bulk_vs_one = enqueue.get("enqueue_many_vs_enqueue_trigger")
    lines = [
        "# Benchmarks",
        "",
        "Generated by the benchmark suite; do not edit by hand. Re-run with:",
        "",
        "```sh",
        ".venv/bin/pip install -e '.[dev,bench]'",
        f".venv/bin/{results['command']}",
        "```",
        "",
        f"Taken {results['taken_at']} in {results['duration_s']:.0f} s"
        + (" (**--quick: smoke size, not figures to quote**)" if results["quick"] else "")
        + ".",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}, "
        f"Celery {m['celery']}, kombu {m['kombu']}, redis-py {m['redis']}, httpx {m['httpx']}, "
        f"gevent {m['gevent'] or 'not installed'}, Redis server {m['redis_server']}. "
        f"Load average at start {m['load_average_at_start']}.",
        "Redis (broker and store, two servers), the sandbox standing in for Clix, the "
        "producer and the workers all share these cores. Expect 10-15% between runs, "
        "more when the machine is shared.",
        "",
        "## Done-when figures",
        "",
        "| figure | measured | target | |",
        "| --- | --- | --- | --- |",
        f"| plain worker at 50 ms / its rate at 0 ms: median of "
        f"{len(default.get('run_ratios_50ms_to_0ms') or [])} runs taken in rotation "
        f"({', '.join(_fmt(r) for r in default.get('run_ratios_50ms_to_0ms') or [])}) "
        f"| {_fmt(ratio_50)} "
        f"({_fmt(by_ms.get(50, {}).get('triggers_per_s'))} / "
        f"{_fmt(by_ms.get(0, {}).get('triggers_per_s'))} triggers/s) | >= 0.8 (0.9) | "
        f"{_verdict(ratio_50, (ratio_50 or 0) >= 0.8)} |",
        f"| worker / bare task at 0 ms, {baseline['pool']} -c {baseline['concurrency']}: "
        f"median of {len(baseline.get('pair_ratios') or [])} runs taken in rotation "
        f"({', '.join(_fmt(r) for r in baseline.get('pair_ratios') or [])}) | "
        f"{_fmt(ratio_bare)} (medians {_fmt(baseline['clix_per_s'])} / "
        f"{_fmt(baseline['bare_per_s'])}) | >= 0.9 | "
        f"{_verdict(ratio_bare, (ratio_bare or 0) >= 0.9)} |",
        f"| our own Redis round trips per trigger (worker, store: claim and commit; with the "
        f"once-a-second work and connection set-up spread over the run) | {_fmt(own_trips)} "
        f"({_fmt(all_trips)}) | <= 2 | {_verdict(own_trips, (own_trips or 0) <= 2)} |",
        f"| Redis bytes per remembered trigger: the ledger's done record (kept "
        f"{_hours(IDEMPOTENCY_TTL_S)}); with the Celery result (+{_fmt(per_result)}, kept "
        f"{_hours(RESULT_TTL_S)}) averaged over a day of triggers | {_fmt(remembered)}; "
        f"{_fmt(day_average)} | <= 300 | "
        f"{_verdict(day_average, max(remembered or 0, day_average or 0) <= 300)} |",
        f"| Redis bytes per queued trigger (store + broker) | {_fmt(queued)} | <= 1,500 | "
        f"{_verdict(queued, (queued or 0) <= 1500)} |",
        f"| `enqueue_trigger` / bare `apply_async` | {_fmt(one_vs_bare)} | >= 0.9 | "
        f"{_verdict(one_vs_bare, (one_vs_bare or 0) >= 0.9)} |",
        f"| bulk path / `enqueue_trigger`, per trigger | {_fmt(bulk_vs_one)} | >= 2 | "
        f"{_verdict(bulk_vs_one, (bulk_vs_one or 0) >= 2)} |",
        "",
        "## The README's worker",
        "",
        f"`{default['command']}`: pool `{default['pool']}`, concurrency "
        f"{default['concurrency']}, prefetch multiplier {default['prefetch_multiplier']}, "
        "draining a backlog (rate over a window after a warm-up, median of the runs).",
        "",
        "| Clix latency | triggers/s | runs | RSS (MB) |",
        "| --- | --- | --- | --- |",
    ]
    for point in default["points"]:
        lines.append(
            f"| {point['latency_ms']:g} ms | {_fmt(point['triggers_per_s'])} | "
            f"{', '.join(_fmt(r) for r in point.get('runs', []))} | {_fmt(point['rss_mb_total'])} |"
        )
    lines += [
        "",
        "## Worker against the bare task (0 ms)",
        "",
        "The bare task (bench/bare_app.py): SET NX PX, one pooled httpx POST, SET; "
        "same pool, concurrency and prefetch, same messages.",
        "",
        "| pool | concurrency | prefetch | worker | bare | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {baseline['pool']} (default) | {baseline['concurrency']} | 1 | "
        f"{_fmt(baseline['clix_per_s'])} | {_fmt(baseline['bare_per_s'])} | {_fmt(ratio_bare)} |",
    ]
    for row in baseline["per_pool"]:
        lines.append(
            f"| {row['pool']} | {row['concurrency']} | {row['prefetch']} | "
            f"{_fmt(row['clix_per_s'])} | {_fmt(row['bare_per_s'])} | {_fmt(row['ratio'])} |"
        )
    lines += _side_by_side_section(baseline.get("side_by_side") or {})
    lines += _flower_section(results.get("flower", {}))
    latencies = sorted({p["latency_ms"] for p in results["pools"]})
    lines += [
        "",
        "## Throughput against concurrency, per pool",
        "",
        "One worker process (`-P POOL -c N`, prefetch multiplier 1; gevent 4: at 1 it "
        "stalls with the Redis broker, the bare task too), triggers/s; RSS is the whole "
        "worker (main process plus pool children) at 0 ms.",
        "",
        "| pool | concurrency | " + " | ".join(f"{ms:g} ms" for ms in latencies) + " | RSS (MB) |",
        "| --- | --- | " + " | ".join("---" for _ in latencies) + " | --- |",
    ]
    keys = sorted({(p["pool"], p["concurrency"]) for p in results["pools"]})
    for pool, concurrency in keys:
        cells = {
            p["latency_ms"]: p
            for p in results["pools"]
            if (p["pool"], p["concurrency"]) == (pool, concurrency)
        }
        rss = cells.get(0, {}).get("rss_mb_total")
        lines.append(
            f"| {pool} | {concurrency} | "
            + " | ".join(
                _fmt(cells[ms]["triggers_per_s"]) if ms in cells else "n/a" for ms in latencies
            )
            + f" | {_fmt(rss)} |"
        )
    if results.get("pools_skipped"):
        lines += ["", f"Not measured (not installed): {', '.join(results['pools_skipped'])}."]
    lines += [
        "",
        f"![throughput against concurrency]({PLOT_NAME})"
        if has_plot
        else "(plot not drawn: matplotlib is not installed)",
    ]
    lines += [
        "",
        "## Memory per worker process (0 ms)",
        "",
        "| pool | concurrency | processes | main (MB) | each child (MB) | total (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rss"]:
        lines.append(
            f"| {row['pool']} | {row['concurrency']} | {row['processes']} | "
            f"{_fmt(row['main_mb'])} | {_fmt(row['per_child_mb'])} | {_fmt(row['total_mb'])} |"
        )
    lines += [
        "",
        "## Enqueue-to-Clix latency under half the maximum load",
        "",
        "The README's worker; `enqueue_trigger` called at a steady rate of half what "
        "the same worker drains at that latency; latency = the request's arrival at the "
        "sandbox minus the enqueue (Clix's own delay comes after arrival).",
        "",
        "| Clix latency | offered/s | triggers | p50 | p99 | max |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["latency"]:
        if "error" in row:
            lines.append(f"| {row['latency_ms']:g} ms | failed: {row['error']} | | | | |")
            continue
        lines.append(
            f"| {row['latency_ms']:g} ms | {_fmt(row['offered_per_s'])} | {row['triggers']} | "
            f"{_fmt(row['p50_ms'], ' ms')} | {_fmt(row['p99_ms'], ' ms')} | "
            f"{_fmt(row['max_ms'], ' ms')} |"
        )
    lines += _redis_section(redis, queued, remembered)
    lines += _producer_section(enqueue)
    lines += [
        "",
        "## Sizing",
        "",
        f"Several README workers on one queue at {sizing['latency_ms']} ms of Clix latency, "
        "on this machine:",
        "",
        "| worker processes | triggers/s | RSS total (MB) |",
        "| --- | --- | --- |",
    ]
    for row in sizing["runs"]:
        lines.append(
            f"| {row['workers']} | {_fmt(row['triggers_per_s'])} | {_fmt(row['rss_mb_total'])} |"
        )
    lines += [
        "",
        f"Best: {_fmt(sizing['machine_per_s'])} triggers/s for this machine; Clix's 1,000 "
        f"triggers/s per project takes {_fmt(sizing['machines_for_clix_limit'])} such "
        "machines (with Redis and the sandbox on the same cores, as here).",
        "",
    ]
    cpu = sizing.get("cpu_ms_per_trigger")
    if cpu:
        lines += [
            "On paper, from CPU time per trigger (the README worker at 50 ms, over the "
            f"measuring window): worker {cpu['workers']:.2f} ms, store Redis "
            f"{cpu['store']:.2f} ms, broker Redis {cpu['broker']:.2f} ms (the sandbox, "
            f"{cpu['sandbox']:.2f} ms, is Clix's side). One worker process runs on one "
            f"core at most (the GIL): at most {_fmt(sizing['per_worker_process_max_per_s'])} "
            f"triggers/s each. 1,000 triggers/s takes {sizing['cores_for_clix_limit']} "
            f"cores of CPU time and at least {sizing['worker_processes_for_clix_limit']} "
            "worker processes; keep machines below ~70% CPU.",
            "",
        ]
    lines += [
        "CPU milliseconds per trigger, by process, at 0 ms (default worker and bare task):",
        "",
        "| run | worker | store | broker | sandbox |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, point in (("README worker", by_ms.get(0)), ("bare task", baseline["bare"])):
        cpu = (point or {}).get("cpu_ms_per_trigger")
        if cpu:
            lines.append(
                f"| {name} | {cpu['workers']:.2f} | {cpu['store']:.2f} | "
                f"{cpu['broker']:.2f} | {cpu['sandbox']:.2f} |"
            )
    lines.append("")
    return "\n".join(lines)


def write(results: dict[str, Any], docs: Path) -> None:
    """Write docs/BENCHMARKS.md and the plot beside it."""
    docs.mkdir(parents=True, exist_ok=True)
    has_plot = plot(results, docs / PLOT_NAME)
    (docs / "BENCHMARKS.md").write_text(markdown(results, has_plot))


if __name__ == "__main__":
    write(json.loads(Path(sys.argv[1]).read_text()), Path(__file__).resolve().parents[1] / "docs")
