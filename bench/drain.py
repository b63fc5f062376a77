"""One throughput point: a worker draining a backlog, measured from the sandbox's side.

A backlog big enough for the measuring window is queued first, then the worker
starts. The rate is counted from the sandbox's records: requests that arrived
within ``window_s`` after a ``warmup_s`` that starts at the first request
(start-up, the first connections and the pool filling are left out). If the
backlog runs dry first, the rate is taken over the requests that were there
(``drained`` says so); a worker that stalls is charged for the whole window.
The worker's resident memory is read at the end of the window, before it is
killed (a throwaway queue; nothing waits for it); CPU time per trigger of the
workers, the store, the broker and the sandbox is taken over the window.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.load import publish_backlog
from bench.stack import Stack, process_tree_cpu_s, process_tree_rss_mb
from config.settings import DEFAULT_CONCURRENCY
from tests.integration.processes import WorkerProcess, wait_until

#: The most triggers/s any point is expected to reach here (sizes the backlog).
CEILING_PER_S = 900.0
#: A point's backlog never exceeds this (publishing it costs seconds too).
MAX_BACKLOG = 6000


@dataclass(frozen=True)
class Point:
    """Where a point was taken: app, pool, concurrency, prefetch, sandbox latency."""

    app: str
    pool: str | None  # None: the app's default (the README's plain command)
    concurrency: int | None
    latency_ms: float
    prefetch: int | None = None
    workers: int = 1  # worker processes on the queue at once (sizing)


def backlog_for(point: Point, seconds: float, most: int = MAX_BACKLOG) -> int:
    """Enough triggers to keep the workers busy for ``seconds`` at their best possible rate."""
    slots = (point.concurrency or DEFAULT_CONCURRENCY) * point.workers
    bound = min(CEILING_PER_S, slots * 1000 / (point.latency_ms + 2))
    return min(most, int(bound * seconds * 1.3) + 20)


def rate_of(
    arrivals: list[float], backlog: int, warmup_s: float, window_s: float
) -> tuple[float, bool]:
    """Triggers/s within the window after the warmup; and whether the backlog ran out.

    A worker that stalls inside the window is charged for it (requests in the
    window over the whole window); only when every trigger of the backlog
    arrived before the window ended is the rate taken over the requests there were.
    """
    times = sorted(arrivals)
    if len(times) < 2:
        return 0.0, False
    start = times[0] + warmup_s
    end = start + window_s
    inside = [t for t in times if start <= t <= end]
    drained = len(times) >= backlog and times[-1] < end
    if not drained:
        return len(inside) / window_s, False
    if len(inside) < 2:  # ran out during the warmup: use everything after the first request
        inside = times
    span = inside[-1] - inside[0]
    return ((len(inside) - 1) / span if span > 0 else 0.0), True


def measure(
    stack: Stack,
    point: Point,
    *,
    warmup_s: float,
    window_s: float,
    max_backlog: int = MAX_BACKLOG,
) -> dict[str, Any]:
    """Take one point; return its figures (rate, RSS, start-up and publish times)."""
    stack.fresh(point.latency_ms)
    run = stack.new_run(point.app)
    backlog = backlog_for(point, warmup_s + window_s + 3, max_backlog)
    publish_s = publish_backlog(stack.broker.url, run.queue, run.campaign, backlog)
    started = time.monotonic()
    workers = []
    try:
        for _ in range(point.workers):
            workers.append(
                stack.start_worker(
                    run, pool=point.pool, concurrency=point.concurrency, prefetch=point.prefetch
                )
            )
        ready_s = time.monotonic() - started
        # a worker that sends nothing is recorded as 0/s; the suite goes on
        with contextlib.suppress(AssertionError):
            wait_until(lambda: stack.seen(run.campaign) > 0, 60, "a first request", every_s=0.05)
        window_start = time.monotonic() + warmup_s
        deadline = window_start + window_s + 0.3
        cpu: dict[str, list[tuple[float, float]]] = {}  # (cpu seconds, requests seen)
        while time.monotonic() < deadline and stack.seen(run.campaign) < backlog:
            if not cpu and time.monotonic() >= window_start:
                cpu["start"] = _cpu_snapshot(stack, workers, run.campaign)
            time.sleep(0.25)
        if cpu:
            cpu["end"] = _cpu_snapshot(stack, workers, run.campaign)
        rss = [mb for w in workers for mb in process_tree_rss_mb(w.proc.pid)]
    finally:
        for worker in workers:
            worker.kill()
            worker.stop()
    records = stack.records(run.campaign)
    rate, drained = rate_of([r["at"] for r in records], backlog, warmup_s, window_s)
    return {
        **asdict(point),
        "triggers_per_s": round(rate, 1),
        "drained": drained,
        "backlog": backlog,
        "accepted": sum(1 for r in records if r["status"] == 200),
        "requests": len(records),
        "rss_mb": [round(mb, 1) for mb in rss],
        "rss_mb_total": round(sum(rss), 1),
        "cpu_ms_per_trigger": _cpu_per_trigger(cpu),
        "worker_ready_s": round(ready_s, 2),
        "publish_per_s": round(backlog / publish_s, 1),
    }


def _cpu_snapshot(
    stack: Stack, workers: list[WorkerProcess], campaign: str
) -> list[tuple[float, float]]:
    """CPU seconds so far of the workers, the store, the broker and the sandbox; requests seen."""
    seen = float(stack.seen(campaign))
    pids = {
        "workers": [w.proc.pid for w in workers],
        "store": [stack.store.process.pid] if stack.store.process else [],
        "broker": [stack.broker.process.pid] if stack.broker.process else [],
        "sandbox": [stack.sandbox.proc.pid],
    }
    return [(sum(process_tree_cpu_s(pid) for pid in group), seen) for group in pids.values()]


def _cpu_per_trigger(cpu: dict[str, list[tuple[float, float]]]) -> dict[str, float] | None:
    """CPU milliseconds per delivered trigger over the window, per kind of process."""
    if "end" not in cpu:
        return None
    names = ("workers", "store", "broker", "sandbox")
    delivered = cpu["end"][0][1] - cpu["start"][0][1]
    if delivered <= 0:
        return None
    return {
        name: round((end[0] - start[0]) * 1000 / delivered, 3)
        for name, start, end in zip(names, cpu["start"], cpu["end"], strict=True)
    }


def median_of(taken: list[dict[str, Any]]) -> dict[str, Any]:
    """The middle run's figures with the median rate; every rate kept (``runs``)."""
    rates = [p["triggers_per_s"] for p in taken]
    middle = sorted(taken, key=lambda p: p["triggers_per_s"])[len(taken) // 2]
    return {**middle, "triggers_per_s": round(statistics.median(rates), 1), "runs": rates}


def rotating(
    stack: Stack, points: list[Point], *, runs: int, **options: Any
) -> list[list[dict[str, Any]]]:
    """Each point taken ``runs`` times, one of each per run, the order rotating run by run.

    A shared machine's speed drifts by tens of percent within minutes: a
    ratio of two points taken minutes apart measures the drift as much as what
    differs between them. Here the points of one run are taken within seconds
    of each other, and each point goes first in turn, so a steady drift favours
    none. Returns each point's runs, in run order: compare them run by run
    (:func:`run_ratios`), summarise each with :func:`median_of`.
    """
    taken: list[list[dict[str, Any]]] = [[] for _ in points]
    for run in range(runs):
        shift = run % len(points)
        for index in [*range(shift, len(points)), *range(shift)]:
            taken[index].append(measure(stack, points[index], **options))
    return taken


def run_ratios(over: list[dict[str, Any]], under: list[dict[str, Any]]) -> list[float]:
    """Rate of ``over`` / rate of ``under``, run by run (0 where ``under`` delivered nothing)."""
    return [
        round(a["triggers_per_s"] / b["triggers_per_s"], 3) if b["triggers_per_s"] else 0.0
        for a, b in zip(over, under, strict=True)
    ]
