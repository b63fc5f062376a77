"""Delivery throughput of the real worker against a bare baseline, side by side.

    python bench/throughput.py [--triggers 2000] [--runs 3] [--pool prefork] [--concurrency 2]

For each run and each app (``bare``: bench/bare_app.py, ``clix``: the real
worker), N trigger messages are queued first, then one worker starts; the rate
is taken from the sandbox's records, first request to last (start-up excluded).
Redis, the sandbox and the worker all share this machine's cores, like
production on one box. Prints medians and the ratio clix/bare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.processes import SandboxProcess, clean_env, wait_until  # noqa: E402
from worker.redis_server import RedisServer  # noqa: E402

API_KEY = "bench-" + uuid.uuid4().hex


def _publish(redis_url: str, queue: str, n: int, campaign: str) -> None:
    from celery import Celery

    producer = Celery("bench-producer", broker=redis_url)
    producer.conf.update(task_default_queue=queue)
    with producer.producer_or_acquire() as pool_producer:
        for i in range(n):
            kwargs = {
                "campaign_id": campaign,
                "idempotency_key": f"k{i}",
                "audience": {"targets": [{"project_user_id": f"u{i}"}]},
                "properties": {"order_id": f"ORD-{i}", "item_count": 3},
            }
            producer.send_task(
                "trigger_campaign",
                kwargs=kwargs,
                queue=queue,
                producer=pool_producer,
                argsrepr="()",
                kwargsrepr="{}",
            )
    producer.close()


def _run(
    app: str, args: argparse.Namespace, redis_url: str, sandbox: SandboxProcess, workdir: Path
) -> float:
    queue = f"bench.{uuid.uuid4().hex[:8]}"
    campaign = f"bench-{uuid.uuid4().hex[:8]}"
    env = clean_env(
        REDIS_URL=redis_url,
        CLIX_BASE_URL=sandbox.url,
        CLIX_PROJECT_ID="bench",
        CLIX_API_KEY=API_KEY,
        CLIX_QUEUE=queue,
        CLIX_KEY_PREFIX=f"b{queue[-8:]}",
        BENCH_QUEUE=queue,
        PYTHONPATH=str(ROOT),
    )
    _publish(redis_url, queue, args.triggers, campaign)
    log = workdir / f"{app}-{queue}.log"
    module = "worker" if app == "clix" else "bench.bare_app"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                module,
                "worker",
                "-P",
                args.pool,
                "-c",
                str(args.concurrency),
                "-Q",
                queue,
                "--loglevel=WARNING",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    try:
        stats = httpx.Client(base_url=sandbox.url)
        wait_until(
            lambda: (
                stats.get("/_sandbox/stats", params={"campaign_id": campaign}).json()["total"]
                >= args.triggers
            ),
            600,
            f"{app} to deliver {args.triggers}",
            every_s=0.2,
        )
        times = [r["at"] for r in sandbox.requests(campaign)]
        stats.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    # steady state: from the first request Clix saw to the last (start-up excluded)
    return (len(times) - 1) / (max(times) - min(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clix-bench-"))
    with RedisServer(appendonly=False) as server:
        sandbox = SandboxProcess(workdir, "bench", API_KEY)
        try:
            rates: dict[str, list[float]] = {"bare": [], "clix": []}
            for run in range(args.runs):
                for app in ("bare", "clix"):
                    rate = _run(app, args, server.url, sandbox, workdir)
                    rates[app].append(rate)
                    print(f"run {run + 1}: {app:<5} {rate:7.0f} triggers/s", flush=True)
        finally:
            sandbox.stop()
    bare, clix = statistics.median(rates["bare"]), statistics.median(rates["clix"])
    print(
        f"\n{args.triggers} triggers, {args.pool} -c {args.concurrency}, "
        f"medians of {args.runs} runs"
    )
    print(f"bare baseline  {bare:7.0f} triggers/s")
    print(f"clix worker    {clix:7.0f} triggers/s   ratio clix/bare = {clix / bare:.2f}")
    print(f"(os.cpu_count() = {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
