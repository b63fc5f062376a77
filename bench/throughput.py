"""Delivery throughput of the real worker against a bare baseline, side by side.

    python bench/throughput.py [--runs 3] [--pool threads] [--concurrency 64] [--latency-ms 0]

One point of the suite (``python -m bench.suite`` measures them all), on its
own: for each run and each app (``bare``: bench/bare_app.py, ``clix``: the real
worker), a backlog is queued, one worker starts, and the rate is counted from
the sandbox's records over a window after a warm-up (bench/drain.py). The two
apps of a run are taken back to back, the one going first alternating
(``drain.rotating``). Prints each run, the medians and the median of the
runs' ratios clix/bare.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import drain  # noqa: E402
from bench.stack import Stack  # noqa: E402
from config.celery_app import DEFAULT_WORKER_CONCURRENCY, DEFAULT_WORKER_POOL  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pool", default=DEFAULT_WORKER_POOL)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_WORKER_CONCURRENCY)
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--window-s", type=float, default=4.0)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the stack stops every process it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    points = [
        drain.Point(app, args.pool, args.concurrency, args.latency_ms, args.prefetch)
        for app in ("bare", "clix")
    ]
    with Stack.running(Path(tempfile.mkdtemp(prefix="clix-bench-"))) as stack:
        # one of each per run, the order rotating: a run's pair is seconds apart
        bare_runs, clix_runs = drain.rotating(
            stack, points, runs=args.runs, warmup_s=1.0, window_s=args.window_s
        )
    ratios = drain.run_ratios(clix_runs, bare_runs)
    for run, (b, c, r) in enumerate(zip(bare_runs, clix_runs, ratios, strict=True), start=1):
        print(
            f"run {run}: bare {b['triggers_per_s']:7.0f}  clix {c['triggers_per_s']:7.0f}  "
            f"triggers/s  ratio {r:.2f}"
        )
    bare = statistics.median(p["triggers_per_s"] for p in bare_runs)
    clix = statistics.median(p["triggers_per_s"] for p in clix_runs)
    print(
        f"\n{args.pool} -c {args.concurrency}, {args.latency_ms:g} ms, medians of {args.runs} runs"
    )
    print(f"bare baseline  {bare:7.0f} triggers/s")
    print(f"clix worker    {clix:7.0f} triggers/s")
    print(f"ratio clix/bare, median of the runs' ratios = {statistics.median(ratios):.2f}")
    print(f"(os.cpu_count() = {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
