"""The fleet-wide rate limiter under load, against a bare baseline without it.

    python bench/fleet_limits.py [--triggers 2000] [--limit 200] [--workers 2] [--concurrency 2]

A sandbox enforces Clix's token bucket at ``--limit`` requests/s. The same
fleet (``--workers`` x ``--concurrency`` processes) drains ``--triggers``
triggers twice: once with ``CLIX_RATE_LIMIT_PER_S`` at the limit, once with the
limiter effectively off and ``CLIX_RATE_LIMIT_LOW_WATERMARK=0`` (the bare
baseline: it still pauses when Clix reports no requests remaining). Printed: achieved rate (first to
last accepted request), 429 answers, and the ratios achieved/limit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.processes import (  # noqa: E402
    FAST_SETTINGS,
    SandboxProcess,
    WorkerProcess,
    clean_env,
    cli,
    wait_until,
)
from worker.redis_server import RedisServer  # noqa: E402

API_KEY = "bench-" + uuid.uuid4().hex


def _run(
    args: argparse.Namespace, limiter_rate: float, workdir: Path, watermark: str = "0.02"
) -> tuple[float, int]:
    with RedisServer(appendonly=False) as redis_server:
        sandbox = SandboxProcess(workdir, "bench", API_KEY, "--rate-limit", str(args.limit))
        suffix = uuid.uuid4().hex[:8]
        env = clean_env(
            REDIS_URL=redis_server.url,
            CLIX_BASE_URL=sandbox.url,
            CLIX_PROJECT_ID="bench",
            CLIX_API_KEY=API_KEY,
            CLIX_QUEUE=f"bench.{suffix}",
            CLIX_KEY_PREFIX=f"b{suffix}",
            CLIX_RATE_LIMIT_PER_S=str(limiter_rate),
            CLIX_RATE_LIMIT_LOW_WATERMARK=watermark,
            CLIX_RATE_LIMIT_BURST=str(max(1, int(args.limit / 10))),
            **FAST_SETTINGS,
        )
        campaign = f"bench-{suffix}"
        path = workdir / f"{suffix}.jsonl"
        path.write_text(
            "".join(
                f'{{"campaign_id": "{campaign}", "idempotency_key": "k{i}"}}\n'
                for i in range(args.triggers)
            )
        )
        assert cli(env, "enqueue", "--file", str(path)).returncode == 0
        workers = [
            WorkerProcess(workdir, env, queue=env["CLIX_QUEUE"], concurrency=args.concurrency)
            for _ in range(args.workers)
        ]
        try:
            wait_until(
                lambda: (
                    Counter(r["status"] for r in sandbox.requests(campaign))[200] >= args.triggers
                ),
                900,
                "the drain",
                every_s=1,
            )
            records = sandbox.requests(campaign)
        finally:
            for worker in workers:
                worker.stop()
            sandbox.stop()
    accepted = sorted(r["at"] for r in records if r["status"] == 200)
    rate = (len(accepted) - 1) / (accepted[-1] - accepted[0])
    return rate, Counter(r["status"] for r in records)[429]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=2000)
    parser.add_argument("--limit", type=float, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clix-bench-"))
    limited = _run(args, args.limit, workdir)
    # bare: no limiter and no early slowing down; the pause once Clix reports
    # X-RateLimit-Remaining 0 stays (a watermark of 0 still means "at 0")
    bare = _run(args, 1_000_000, workdir, watermark="0")
    processes = args.workers * args.concurrency
    print(f"{args.triggers} triggers, {processes} worker processes, Clix limit {args.limit:g}/s")
    for name, (rate, answered_429) in (("limiter on", limited), ("bare (limiter off)", bare)):
        print(
            f"{name:<20} {rate:7.1f} accepted/s  ratio to limit {rate / args.limit:5.2f}"
            f"  429 answers {answered_429}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
