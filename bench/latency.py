"""Enqueue-to-Clix latency under a steady load of half the maximum rate.

The default worker (the README's plain command) runs while this process calls
``enqueue_trigger`` at half the rate the same worker reached draining a backlog
at the same sandbox latency. Each trigger carries the instant it was enqueued
(``properties.sent_at_us``); the sandbox records when its request arrived. The
latency is arrival minus enqueue: queueing, the worker's fetch, our checks and
the network up to Clix's door (the sandbox's own delay comes after arrival).
A warm-up load of the same rate runs first and is not counted.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.load import SteadyLoad
from bench.stack import Stack
from tests.integration.processes import wait_until

#: Load before the measured load, at the same rate.
WARMUP_S = 1.5


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))
    return ordered[index]


def measure(
    stack: Stack, *, latency_ms: float, max_rate_per_s: float, duration_s: float
) -> dict[str, Any]:
    """Run the steady load; return p50/p99/max in ms and what was offered and delivered."""
    stack.fresh(latency_ms)
    run = stack.producer_run()
    rate = max(1.0, max_rate_per_s / 2)
    worker = stack.start_worker(run, pool=None, concurrency=None)
    try:
        # Warm-up at the same rate, not measured: the context, the threads'
        # connections and Clix clients are built by the first deliveries.
        warmup = SteadyLoad(f"{run.campaign}-warmup", rate, WARMUP_S)
        warmup.start()
        warmup.join(timeout=WARMUP_S * 3 + 30)
        wait_until(lambda: stack.seen(f"{run.campaign}-warmup") >= warmup.sent, 120, "the warm-up")
        load = SteadyLoad(run.campaign, rate, duration_s)
        started = time.monotonic()
        load.start()
        load.join(timeout=duration_s * 3 + 30)
        offered_s = time.monotonic() - started
        wait_until(
            lambda: stack.seen(run.campaign) >= load.sent, 120, "the load to arrive", every_s=0.2
        )
    finally:
        worker.stop()
    latencies = [
        r["at"] * 1000 - r["body"]["properties"]["sent_at_us"] / 1000
        for r in stack.records(run.campaign)
        if r["status"] == 200
    ]
    return {
        "latency_ms": latency_ms,
        "offered_per_s": round(rate, 1),
        "achieved_offer_per_s": round(load.sent / offered_s, 1),
        "producer_behind_s": round(load.behind_s, 3),
        "triggers": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
        "mean_ms": round(statistics.fmean(latencies), 1),
    }
