"""Delivery throughput of the real worker against a bare baseline, side by side.

    python bench/throughput.py [--runs 3] [--pool threads] [--concurrency 64] [--latency-ms 0]

One point of the suite (``python -m bench.suite`` measures them all), on its
own: for each run and each app (``bare``: bench/bare_app.py, ``clix``: the real
worker), a backlog is queued, one worker starts, and the rate is counted from
the sandbox's records over a window after a warm-up (bench/drain.py). Prints
medians and the ratio clix/bare.
"""

from __future__ import annotations

import argparse
import os
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
    rates: dict[str, list[float]] = {"bare": [], "clix": []}
    with Stack.running(Path(tempfile.mkdtemp(prefix="clix-bench-"))) as stack:
        for run in range(args.runs):
            for app in ("bare", "clix"):
                point = drain.Point(
                    app, args.pool, args.concurrency, args.latency_ms, args.prefetch
                )
                rate = drain.measure(stack, point, warmup_s=1.0, window_s=args.window_s)
                rates[app].append(rate["triggers_per_s"])
                print(
                    f"run {run + 1}: {app:<5} {rate['triggers_per_s']:7.0f} triggers/s", flush=True
                )
    bare, clix = statistics.median(rates["bare"]), statistics.median(rates["clix"])
    print(
        f"\n{args.pool} -c {args.concurrency}, {args.latency_ms:g} ms, medians of {args.runs} runs"
    )
    print(f"bare baseline  {bare:7.0f} triggers/s")
    print(f"clix worker    {clix:7.0f} triggers/s   ratio clix/bare = {clix / bare:.2f}")
    print(f"(os.cpu_count() = {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
