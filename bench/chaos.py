"""Keep every promise when Redis, the broker, the network or a clock misbehaves.

    python bench/chaos.py [--quick] [--triggers 10000] [--workers 3] [--seed 1] [--json PATH]

Real processes on this machine: the store's Redis and the broker's Redis (both
AOF), a TCP proxy between the workers and the store, the sandbox, ``--workers``
Celery workers (prefork, 2 processes each). Two producers enqueue ``--triggers``
triggers (5% reuse a key, 1% poison) at the delivery rate, through the same
store proxy, retrying what raised (bench/chaos_producer.py), so the faults
meet them too. The sandbox answers 10% 503, drops 2% of connections, adds
20 ms, and a 20 s window of 429s comes and goes; it SIGKILLs a random worker
5 times (each replaced), cuts the store's connections for 1-3 s 5 times (once
right after Clix accepted), restarts the store's Redis once and the broker
once, runs one producer with its clock 60 s behind (libfaketime), and holds
one Clix answer past the lease. It also schedules 2% more triggers
5-30 s ahead and cancels half of them (bench/chaos_schedule.py): the kept ones
must be delivered and never early, the cancelled ones never sent. Then it
waits for the drain and prints one line::

    sent=… delivered=… lost=… duplicate_sends=… ambiguous_counted=… dlq=… expected_dlq=… …

It exits 0 only if lost = 0, duplicate_sends <= ambiguous_counted, no duplicate
is explained by store faults alone, and the DLQ holds exactly the poison; 1
otherwise (the failed checks go to stderr, the evidence to ``--json``). The
fields are explained in bench/chaos_verdict.py. ``--quick`` is the CI size
(600 triggers, 2 kills, 3 cuts, an 8 s 429 window: about 70 s).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_faults import FaultDriver, FaultPlan  # noqa: E402
from bench.chaos_fleet import ChaosFleet  # noqa: E402
from bench.chaos_load import Load, finish_producers, plan_load, start_producers  # noqa: E402
from bench.chaos_schedule import (  # noqa: E402
    judge_scheduled,
    schedule_and_cancel,
    wait_for_scheduled,
)
from bench.chaos_verdict import (  # noqa: E402
    Verdict,
    ambiguous_counter,
    dlq_entries,
    judge,
    wait_for_drain,
)

#: Clix's misbehaviour throughout the run (the 429 window comes on top).
SANDBOX_FAULTS = ["--fail-rate", "0.10", "--drop-rate", "0.02", "--latency-ms", "20"]
FULL = {"triggers": 10_000, "rate": 100.0, "drain_s": 900.0, "stall_s": 120.0}
QUICK = {"triggers": 600, "rate": 20.0, "drain_s": 150.0, "stall_s": 45.0}
QUICK_PLAN = FaultPlan(kills=2, cuts=3, window_429_s=8.0, hold_s=10.0, stall_s=15.0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the CI size (about 70 s)")
    p.add_argument("--triggers", type=int, help="triggers to send (10000; quick 600)")
    p.add_argument("--workers", type=int, default=3, help="workers, 2 processes each (min 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    p.add_argument("--rate", type=float, help="fleet rate limit, req/s (100; quick 20)")
    p.add_argument("--json", type=Path, help="write the verdict and the fault timeline here")
    p.add_argument(
        "--broker-in-store",
        action="store_true",
        help="the queue in the store's Redis (the default deployment), behind the proxy",
    )
    p.add_argument(
        "--default-pool",
        action="store_true",
        help="workers as the README starts them (threads) instead of prefork -c 2",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the chaos scenario; 0 when every promise was kept, 1 when not, 2 on bad usage."""
    parser = _parser()
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    triggers = args.triggers or int(size["triggers"])
    if args.workers < 3 or triggers < 100:
        parser.error("--workers must be at least 3 and --triggers at least 100")
    plan = QUICK_PLAN if args.quick else FaultPlan()
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="clix-chaos-"))
    fleet = ChaosFleet(
        workdir,
        api_key="chaos-" + uuid.uuid4().hex,
        rate_per_s=args.rate or size["rate"],
        seed=args.seed,
        broker_in_store=args.broker_in_store,
        default_pool=args.default_pool,
    )
    started = time.monotonic()
    try:
        fleet.start(workers=args.workers, sandbox_args=[*SANDBOX_FAULTS, "--seed", str(args.seed)])
        load = plan_load(triggers, uuid.uuid4().hex[:8], rng)
        verdict, events = _run(fleet, load, plan, rng, size)
    finally:
        fleet.stop()
    report: dict[str, Any] = {
        "verdict": verdict.as_dict(),
        "events": events,
        "seed": args.seed,
        "triggers": triggers,
        "workers": args.workers,
        "broker_in_store": args.broker_in_store,
        "default_pool": args.default_pool,
        "clock_skew": load.clock_skew,
        "reused_keys": load.reused,
        "plan": plan.__dict__,
        "elapsed_s": round(time.monotonic() - started, 1),
        "logs": None if verdict.ok else str(workdir),  # kept only when a check failed
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print(verdict.line(), flush=True)
    for check, kept in verdict.checks.items():
        if not kept:
            print(f"chaos: FAILED {check}", file=sys.stderr)
    print(
        f"chaos: {report['elapsed_s']} s, clock skew {load.clock_skew}, "
        f"duplicates by cause {verdict.details['duplicates_by_cause']}, "
        f"DLQ by reason {verdict.details['dlq_by_reason']}",
        file=sys.stderr,
    )
    if verdict.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"chaos: worker logs kept in {workdir}", file=sys.stderr)
    return 0 if verdict.ok else 1


def _run(
    fleet: ChaosFleet, load: Load, plan: FaultPlan, rng: random.Random, size: dict[str, float]
) -> tuple[Verdict, list[dict[str, Any]]]:
    assert fleet.sandbox is not None
    sandbox = fleet.sandbox
    # every request for the poison campaign is refused, redeliveries included
    rejection = {"status": 400, "body": {"error": "campaign is not API-triggered"}}
    sandbox.script(load.poison_campaign, *[rejection] * (10 * len(load.rejected_keys)))
    # the producers enqueue at the delivery rate (the limiter's): the drain
    # follows them, so the faults, due at shares of it, meet them too
    producers = start_producers(
        load,
        fleet.producer_env,
        fleet.workdir,
        fleet.broker_url,
        fleet.queue,
        rate=fleet.rate_per_s,
    )
    # scheduled triggers (half cancelled) fall due among the faults
    scheduled = schedule_and_cancel(
        fleet.store.url, fleet.prefix, load.campaign, len(load.triggers), rng
    )

    def progress() -> float:
        stats = sandbox.http.get("/_sandbox/stats", params={"campaign_id": load.campaign})
        return int(stats.json()["by_status"].get("200", 0)) / len(load.unique_keys)

    driver = FaultDriver(fleet, load.campaign, plan, rng, progress)
    driver.run()
    finish_producers(load, producers, timeout_s=size["drain_s"])
    print(
        f"chaos: enqueued {load.sent} ({load.clock_skew} for one producer in ten), "
        f"{load.retried_enqueues} after a failed call, {len(load.gave_up)} given up",
        file=sys.stderr,
    )
    conn = redis.Redis.from_url(fleet.store.url)
    try:
        states = wait_for_drain(
            conn, fleet.prefix, load, timeout_s=size["drain_s"], stall_s=size["stall_s"]
        )
        # a held answer lands late; the raw poison is dead-lettered in queue order
        deadline = time.monotonic() + plan.hold_s + 20
        while time.monotonic() < deadline and (
            sandbox.http.get("/_sandbox/in_flight").json()["in_flight"]
            or sum(load.marker in str(e.get("raw")) for e in dlq_entries(conn, fleet.prefix))
            < load.raw_count
        ):
            time.sleep(1)
        still_open = wait_for_scheduled(fleet.store.url, fleet.prefix, scheduled, 60)
        verdict = judge(
            load,
            states,
            sandbox.requests(load.campaign),
            dlq_entries(conn, fleet.prefix),
            ambiguous_counter(conn, fleet.prefix),
            driver.events,
        )
        checks, details, duplicates = judge_scheduled(
            scheduled, sandbox.requests(scheduled.campaign), still_open
        )
        verdict.checks.update(checks)
        verdict.details.update(details)
        verdict.duplicate_sends += duplicates
        verdict.checks["duplicates_within_ambiguous_counted"] = (
            verdict.duplicate_sends <= verdict.ambiguous_counted
        )
    finally:
        conn.close()
    return verdict, [e.as_dict() for e in driver.events]


if __name__ == "__main__":
    raise SystemExit(main())
