"""The benchmark suite: one command, one machine, every figure of docs/BENCHMARKS.md.

    python -m bench.suite [--quick] [--out docs/benchmarks.json] [--no-docs]

Starts a broker Redis, a store Redis and the sandbox (bench/stack.py), then:

1. ``default``: the README's plain ``celery -A worker worker --loglevel=INFO``
   draining a backlog at 0, 50 and 200 ms of sandbox latency (the done-when
   figure: its rate at 50 ms over its rate at 0 ms).
2. ``baseline``: the bare task (bench/bare_app.py) on the same pool,
   concurrency and prefetch, at 0 ms (the done-when figure: worker/bare).
   The worker at 0 and 50 ms and the bare task are taken in rotation, one of
   each per run, over windows twice as long as the other points' (bench/drain.py
   ``rotating``): each figure is the median of its run-by-run ratios, so the
   drift of a shared machine between minutes does not enter it. Per pool too
   (one run each). ``side_by_side``: both draining at once on the same cores,
   a second opinion that no drift can enter (bench/side_by_side.py).
   ``flower``: the default worker at 0 ms with Flower attached (bench/flower.py).
3. ``pools``: throughput against concurrency for prefork, threads and gevent
   (when installed: ``pip install -e '.[bench]'``) at 0, 50 and 200 ms; each
   point keeps the worker's resident memory per process.
4. ``latency``: p50/p99 enqueue-to-Clix latency under a steady load of half
   the default worker's maximum (bench/latency.py).
5. ``redis``: commands, round trips and bytes per trigger, producer and worker,
   store and broker apart (bench/redis_cost.py).
6. ``enqueue``: ``enqueue_trigger`` against a bare ``apply_async``, and the bulk
   path (bench/enqueue.py).
7. ``sizing``: several default workers on one queue at 50 ms; the machine's
   rate and how many such machines Clix's 1,000 triggers/s takes.

Writes the JSON (``--out``), and unless ``--no-docs`` docs/BENCHMARKS.md and
docs/benchmarks.png. ``--quick`` is a smoke size (about a minute): few points,
short windows, tiny N; its figures are not worth quoting. Everything runs on
this machine's cores together, like production on one box; numbers move
10-15% between runs, more on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import drain, flower, latency, redis_cost, side_by_side
from bench.drain import Point
from bench.enqueue import enqueue_rates
from bench.machine import machine, pools_available
from bench.stack import Stack
from config.celery_app import DEFAULT_WORKER_CONCURRENCY, DEFAULT_WORKER_POOL

ROOT = Path(__file__).resolve().parents[1]
#: Clix's documented limit per project: what the sizing section plans for.
CLIX_LIMIT_PER_S = 1000


@dataclass(frozen=True)
class Size:
    """How big a run is."""

    warmup_s: float
    window_s: float
    max_backlog: int
    headline_runs: int
    latencies_ms: tuple[float, ...]
    concurrency: dict[str, tuple[int, ...]]
    steady_s: float
    steady_latencies_ms: tuple[float, ...]
    redis_triggers: int
    enqueue_triggers: int
    sizing_workers: tuple[int, ...]
    baseline_points: dict[str, int] = field(default_factory=dict)
    #: Prefetch multiplier per pool where 1 does not work: gevent with the Redis
    #: broker and acks_late stalls at prefetch 1 (~10 triggers/s, bare task too).
    prefetch: dict[str, int] = field(default_factory=lambda: {"gevent": 4})


FULL = Size(
    warmup_s=1.0,
    window_s=3.0,
    max_backlog=6000,
    headline_runs=5,
    latencies_ms=(0, 50, 200),
    concurrency={"prefork": (2, 4, 8), "threads": (16, 64, 128), "gevent": (16, 64, 200)},
    steady_s=10.0,
    steady_latencies_ms=(0, 50),
    redis_triggers=1000,
    enqueue_triggers=1000,
    sizing_workers=(1, 2, 3),
    baseline_points={"prefork": 2, "threads": 128, "gevent": 64},
)
QUICK = Size(
    warmup_s=0.3,
    window_s=1.0,
    max_backlog=400,
    headline_runs=1,
    latencies_ms=(0, 50),
    concurrency={"prefork": (2,), "threads": (16,), "gevent": (16,)},
    steady_s=2.0,
    steady_latencies_ms=(50,),
    redis_triggers=30,
    enqueue_triggers=40,
    sizing_workers=(2,),
    baseline_points={"prefork": 2},
)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_suite(size: Size, workdir: Path) -> dict[str, Any]:
    """Every section of the results, in one run."""
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine()}
    drain_options = {
        "warmup_s": size.warmup_s,
        "window_s": size.window_s,
        "max_backlog": size.max_backlog,
    }
    with Stack.running(workdir) as stack:
        _progress("default worker (the README's plain command) at 0 and 50 ms, bare task, rotating")
        default: dict[str, Any] = {
            "command": "celery -A worker worker --loglevel=INFO",
            "pool": DEFAULT_WORKER_POOL,
            "concurrency": DEFAULT_WORKER_CONCURRENCY,
            "prefetch_multiplier": 1,
            "points": [],
        }
        # The worker at 0 and 50 ms and the bare task at 0 ms, in rotation run by run
        # (drain.rotating): the two done-when ratios compare runs seconds apart.
        # Longer windows than the other points': these figures get the most averaging.
        rotated = [Point("clix", None, None, 0), Point("clix", None, None, 50)]
        bare_task = Point("bare", DEFAULT_WORKER_POOL, DEFAULT_WORKER_CONCURRENCY, 0)
        clix_0ms, clix_50ms, bare_0ms = drain.rotating(
            stack,
            [*rotated, bare_task],
            runs=size.headline_runs,
            **{**drain_options, "window_s": 2 * size.window_s},
        )
        for ms in size.latencies_ms:
            if ms in (0, 50):
                default["points"].append(drain.median_of(clix_0ms if ms == 0 else clix_50ms))
            else:
                once = drain.measure(stack, Point("clix", None, None, ms), **drain_options)
                default["points"].append(drain.median_of([once]))
        pair_ratios = drain.run_ratios(clix_0ms, bare_0ms)
        latency_ratios = drain.run_ratios(clix_50ms, clix_0ms)
        bare = drain.median_of(bare_0ms)
        by_latency = {p["latency_ms"]: p["triggers_per_s"] for p in default["points"]}
        if latency_ratios:
            # each run's 50 ms rate over its 0 ms rate; the figure is their median
            default["run_ratios_50ms_to_0ms"] = latency_ratios
            default["ratio_50ms_to_0ms"] = round(statistics.median(latency_ratios), 2)
        results["default"] = default

        baseline: dict[str, Any] = {
            "pool": DEFAULT_WORKER_POOL,
            "concurrency": DEFAULT_WORKER_CONCURRENCY,
            "bare_per_s": bare["triggers_per_s"],
            "clix_per_s": by_latency.get(0),
            "bare": bare,
            # worker/bare of each run of the rotation; the figure is their median
            "pair_ratios": pair_ratios,
            "per_pool": [],
        }
        if pair_ratios:
            baseline["ratio"] = round(statistics.median(pair_ratios), 2)
        results["baseline"] = baseline

        _progress("the worker and the bare task side by side")
        baseline["side_by_side"] = _guarded(
            {},
            lambda: side_by_side.measure(
                stack,
                DEFAULT_WORKER_POOL,
                DEFAULT_WORKER_CONCURRENCY,
                runs=max(1, size.headline_runs - 2),
                warmup_s=size.warmup_s,
                window_s=2 * size.window_s,
                max_backlog=size.max_backlog,
            ),
        )

        _progress("the default worker with Flower attached")
        results["flower"] = _guarded(
            {},
            lambda: flower.measure(
                stack, by_latency.get(0), runs=size.headline_runs, **drain_options
            ),
        )

        available = pools_available()
        results["pools_skipped"] = [p for p in size.concurrency if p not in available]
        points = []
        for pool in available:
            for concurrency in size.concurrency[pool]:
                for ms in size.latencies_ms:
                    _progress(f"{pool} -c {concurrency} at {ms:g} ms")
                    point = Point("clix", pool, concurrency, ms, size.prefetch.get(pool))
                    points.append(
                        _guarded(point, lambda p=point: drain.measure(stack, p, **drain_options))
                    )
        results["pools"] = points

        for pool, concurrency in size.baseline_points.items():
            if pool not in available:
                continue
            _progress(f"bare {pool} -c {concurrency}")
            point = Point("bare", pool, concurrency, 0, size.prefetch.get(pool))
            bare_point = _guarded(point, lambda p=point: drain.measure(stack, p, **drain_options))
            clix_rate = next(
                (
                    p["triggers_per_s"]
                    for p in points
                    if (p["pool"], p["concurrency"], p["latency_ms"]) == (pool, concurrency, 0)
                ),
                None,
            )
            baseline["per_pool"].append(
                {
                    "pool": pool,
                    "concurrency": concurrency,
                    "prefetch": size.prefetch.get(pool, 1),
                    "clix_per_s": clix_rate,
                    "bare_per_s": bare_point["triggers_per_s"],
                    "ratio": round(clix_rate / bare_point["triggers_per_s"], 2)
                    if clix_rate and bare_point["triggers_per_s"]
                    else None,
                }
            )

        results["latency"] = []
        for ms in size.steady_latencies_ms:
            _progress(f"steady load at {ms:g} ms")
            top = next(p["triggers_per_s"] for p in default["points"] if p["latency_ms"] == ms)
            results["latency"].append(
                _guarded(
                    {"latency_ms": ms},
                    lambda ms=ms, top=top: latency.measure(
                        stack, latency_ms=ms, max_rate_per_s=top, duration_s=size.steady_s
                    ),
                )
            )

        _progress("Redis commands and bytes per trigger")
        results["redis"] = _guarded({}, lambda: redis_cost.measure(stack, size.redis_triggers))

        _progress("producer rates")
        results["enqueue"] = _guarded({}, lambda: enqueue_rates(stack, size.enqueue_triggers))

        _progress("sizing: several workers at 50 ms")
        sizing_runs = []
        for workers in size.sizing_workers:
            point = Point("clix", None, None, 50, workers=workers)
            options = {**drain_options, "warmup_s": size.warmup_s + 1.5 * workers}
            sizing_runs.append(
                _guarded(point, lambda p=point, o=options: drain.measure(stack, p, **o))
            )
        best = max((p["triggers_per_s"] or 0) for p in sizing_runs)
        results["sizing"] = {
            "latency_ms": 50,
            "runs": sizing_runs,
            "machine_per_s": best,
            "machines_for_clix_limit": math.ceil(CLIX_LIMIT_PER_S / best) if best else None,
            **on_paper([p for p in default["points"] if p["latency_ms"] == 50]),
        }
    results["rss"] = rss_summary(results)
    results["duration_s"] = round(time.monotonic() - started, 1)
    return results


def _guarded(
    where: Point | dict[str, Any], measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run one measurement; a failure is recorded in its place and the suite goes on.

    The suite is long and run once: one broken point must not cost the others.
    """
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - recorded, shown in the report, the run goes on
        _progress(f"FAILED: {type(exc).__name__}: {exc}")
        base = asdict(where) if isinstance(where, Point) else dict(where)
        return {
            **base,
            "error": f"{type(exc).__name__}: {exc}"[:500],
            "triggers_per_s": None,
            "rss_mb": [],
            "rss_mb_total": None,
        }


def on_paper(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Sizing from CPU time: what 1,000 triggers/s costs in cores, Clix's side not counted.

    One worker process runs its threads on one core at most (the GIL), so it
    delivers at most ``1000 / worker ms`` triggers/s however idle the machine.
    """
    cpu = points[0].get("cpu_ms_per_trigger") if points else None
    if not cpu or not cpu.get("workers"):
        return {}
    ours_ms = cpu["workers"] + cpu["store"] + cpu["broker"]
    return {
        "cpu_ms_per_trigger": cpu,
        "per_worker_process_max_per_s": round(1000 / cpu["workers"]),
        "cores_for_clix_limit": round(CLIX_LIMIT_PER_S * ours_ms / 1000, 1),
        "worker_processes_for_clix_limit": math.ceil(CLIX_LIMIT_PER_S * cpu["workers"] / 1000),
    }


def rss_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Resident memory per worker process, by pool and concurrency (at 0 ms)."""
    rows = []
    for point in [*results["default"]["points"][:1], *results["pools"]]:
        if point["latency_ms"] != 0:
            continue
        sizes = point.get("rss_mb") or []
        rows.append(
            {
                "pool": point["pool"] or f"{DEFAULT_WORKER_POOL} (default)",
                "concurrency": point["concurrency"] or DEFAULT_WORKER_CONCURRENCY,
                "processes": len(sizes),
                "main_mb": sizes[0] if sizes else None,
                "per_child_mb": round(sum(sizes[1:]) / (len(sizes) - 1), 1)
                if len(sizes) > 1
                else None,
                "total_mb": point.get("rss_mb_total"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: tiny N, few points")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.json")
    parser.add_argument("--no-docs", action="store_true", help="write the JSON only")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    # SIGTERM unwinds like Ctrl-C, so the stack stops every process it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="clix-bench-"))
    command = "python -m bench.suite" + (" --quick" if args.quick else "")
    results = {"command": command, "quick": args.quick, **run_suite(size, workdir)}
    results["taken_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    _progress(f"wrote {args.out} ({results['duration_s']} s); worker logs in {workdir}")
    if not args.no_docs:
        from bench import report

        report.write(results, ROOT / "docs")
        _progress("wrote docs/BENCHMARKS.md and docs/benchmarks.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
