"""The worker and the bare task draining at the same time, on the same cores.

A second opinion on the done-when ratio worker/bare. Taken one after the
other, even seconds apart (bench/drain.py ``rotating``), two runs see a shared
machine at different speeds, and a single run moves by tens of percent. Here
both workers drain their own backlog (own queue, own campaign) at once and
both rates are counted over the same window, so whatever the machine does
meets both alike. They compete for the cores, so the rates are lower than
alone; what the figure tells is the relative cost: with each worker busy the
whole window, the ratio of rates is the ratio of what a trigger costs each
one, weighted by the CPU each got (both kept, per run).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.drain import CEILING_PER_S, Point, backlog_for
from bench.load import publish_backlog
from bench.stack import Run, Stack, process_tree_cpu_s
from tests.integration.processes import wait_until

APPS = ("bare", "clix")


def measure(
    stack: Stack,
    pool: str,
    concurrency: int,
    *,
    runs: int,
    warmup_s: float,
    window_s: float,
    max_backlog: int,
) -> dict[str, Any]:
    """``runs`` side-by-side runs; the median ratio clix/bare and every run's figures."""
    taken = [
        _run(stack, pool, concurrency, warmup_s=warmup_s, window_s=window_s, most=max_backlog)
        for _ in range(runs)
    ]
    return {
        "pool": pool,
        "concurrency": concurrency,
        "ratio": round(statistics.median(run["ratio"] for run in taken), 2),
        "runs": taken,
    }


def _run(
    stack: Stack, pool: str, concurrency: int, *, warmup_s: float, window_s: float, most: int
) -> dict[str, Any]:
    stack.fresh(0.0)
    runs = {app: stack.new_run(app) for app in APPS}
    # Each backlog outlasts the window even if its worker had the machine to
    # itself; ``most`` keeps the full run's publishing bounded, but never below
    # what a short window needs (the quick size's cap would run dry, see _busy).
    point = Point("clix", pool, concurrency, 0.0)
    backlog = max(
        backlog_for(point, warmup_s + window_s + 3, most),
        int(CEILING_PER_S * (warmup_s + window_s + 1)),
    )
    # both workers are up before either backlog is queued: neither drains alone first
    workers = {
        app: stack.start_worker(runs[app], pool=pool, concurrency=concurrency) for app in APPS
    }
    try:
        _publish_interleaved(stack, list(runs.values()), backlog)
        wait_until(
            lambda: all(stack.seen(run.campaign) > 0 for run in runs.values()),
            60,
            "a first request from both workers",
            every_s=0.05,
        )
        time.sleep(warmup_s)
        cpu_start = {app: process_tree_cpu_s(w.proc.pid) for app, w in workers.items()}
        start = time.time()  # the sandbox stamps arrivals with this machine's clock
        time.sleep(window_s)
        end = time.time()
        cpu_s = {app: process_tree_cpu_s(w.proc.pid) - cpu_start[app] for app, w in workers.items()}
    finally:
        for worker in workers.values():
            worker.kill()
            worker.stop()
    arrivals = {app: [r["at"] for r in stack.records(run.campaign)] for app, run in runs.items()}
    busy_s = _busy(arrivals, backlog, start, end)
    figures: dict[str, Any] = {}
    for app, times in arrivals.items():
        delivered = sum(1 for at in times if start <= at <= start + busy_s)
        in_window = sum(1 for at in times if start <= at <= end)
        figures[app] = {
            "triggers_per_s": round(delivered / busy_s, 1) if busy_s > 0 else 0.0,
            "backlog_left": backlog - len(times),  # > 0: busy the whole window
            # CPU is sampled over the whole window, so it is set against every
            # request of the window (a worker that ran dry early shows fewer cores)
            "cores": round(cpu_s[app] / window_s, 2),
            "cpu_ms_per_trigger": round(cpu_s[app] * 1000 / in_window, 3) if in_window else None,
        }
    bare, clix = figures["bare"]["triggers_per_s"], figures["clix"]["triggers_per_s"]
    return {
        **figures,
        "window_s": round(busy_s, 2),
        "ratio": round(clix / bare, 3) if bare else 0.0,
    }


def _publish_interleaved(stack: Stack, runs: list[Run], backlog: int, chunk: int = 500) -> None:
    """Queue both backlogs in alternating chunks, so neither worker starts far ahead."""
    for first in range(0, backlog, chunk):
        for run in runs:
            count = min(chunk, backlog - first)
            publish_backlog(stack.broker.url, run.queue, run.campaign, count, first=first)


def _busy(arrivals: dict[str, list[float]], backlog: int, start: float, end: float) -> float:
    """Seconds from ``start`` during which both workers still had work queued.

    A worker whose whole backlog arrived before ``end`` ran dry at its last
    request; counting the other one past that point would give it the machine
    alone. The rates are taken over the overlap.
    """
    stop = end
    for times in arrivals.values():
        if len(times) >= backlog and times:
            stop = min(stop, max(times))
    return max(0.0, stop - start)
