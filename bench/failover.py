"""What a Sentinel failover costs: duplicate sends, recovery time, and the price of ``WAIT``.

Each run starts a primary, two replicas and three sentinels (down after 1 s),
two workers with the store and the broker behind Sentinel, and the sandbox;
queues a backlog, SIGKILLs the primary once a share of it was sent, and waits
until every trigger reached Clix. Per run it prints how many triggers Clix
accepted twice, how many of those the fleet counted as ambiguous (a request
in flight when the store went away), the rest (writes the old primary
acknowledged and never replicated: the ledger forgot a commit), how long the
sentinels took and how long until the backlog was through.

Runs go once with the commit as it is (``CLIX_REDIS_COMMIT_REPLICAS=0``) and
once with ``WAIT 1`` after every commit, and each mode's steady throughput is
measured on a drain without failover, plus the commit alone (claim + commit in
a loop from one thread) so the WAIT's own cost is not hidden by Clix latency.

    python -m bench.failover [--runs 3] [--triggers 600] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.load import typical_trigger
from config.connections import store_client
from config.keys import KeySpace, Scope
from config.settings import Settings
from tasks.idempotency import IdempotencyStore, new_owner
from tests.integration.processes import (
    FAST_SETTINGS,
    SandboxProcess,
    WorkerProcess,
    clean_env,
    cli,
    wait_until,
)
from tests.integration.sentinel import MASTER_NAME, SentinelGroup

PROJECT_ID = "bench-project"
API_KEY = "sk-bench-failover"
#: Two, so that a replica is left to confirm WAIT after the failover promoted one.
REPLICAS = 2
_REPUBLISHED = re.compile(r"reconciler re-published (\d+) lost trigger")


def _accepted(sandbox: SandboxProcess, campaign: str) -> Counter[str]:
    return Counter(
        r["body"]["properties"]["order_id"]
        for r in sandbox.requests(campaign)
        if r["status"] == 200
    )


def _enqueue(env: dict[str, str], workdir: Path, count: int, campaign: str) -> None:
    """Queue ``count`` triggers through the producer API (``clix-worker enqueue --file``).

    The producer API writes each trigger's pending record first, which is what
    lets the reconciler re-publish a message the broker lost in the failover.
    """
    path = workdir / f"{campaign}.jsonl"
    path.write_text("".join(json.dumps(typical_trigger(campaign, n)) + "\n" for n in range(count)))
    done = cli(env, "enqueue", "--file", str(path))
    if done.returncode != 0:
        raise RuntimeError(f"enqueue failed: {done.stderr[-2000:]}")


def _republished(workers: list[WorkerProcess]) -> int:
    """Triggers the reconciler re-published (their message was lost), from the worker logs."""
    found = (_REPUBLISHED.search(line) for w in workers for line in w.log().splitlines())
    return sum(int(m[1]) for m in found if m)


def fleet_settings(env: dict[str, str]) -> Settings:
    """The settings a fleet with environment ``env`` runs with."""
    values = {k.lower(): v for k, v in env.items() if k.startswith(("CLIX_", "REDIS_", "CELERY_"))}
    return Settings(**values, _env_file=None)  # type: ignore[call-arg]


def _fleet_env(group: SentinelGroup, sandbox: SandboxProcess, wait: bool) -> dict[str, str]:
    return clean_env(
        REDIS_URL=group.url(db=0),
        CELERY_BROKER_URL=group.kombu_url(db=1),
        CLIX_BROKER_SENTINEL_MASTER=MASTER_NAME,
        CLIX_BASE_URL=sandbox.url,
        CLIX_PROJECT_ID=PROJECT_ID,
        CLIX_API_KEY=API_KEY,
        CLIX_QUEUE=f"clix.bench.{uuid.uuid4().hex[:8]}",
        CLIX_KEY_PREFIX=f"bench{uuid.uuid4().hex[:8]}",
        CLIX_VISIBILITY_TIMEOUT_S="10",
        CLIX_UNACKED_RESTORE_INTERVAL_S="1",
        CLIX_REDIS_COMMIT_REPLICAS="1" if wait else "0",
        CLIX_REDIS_COMMIT_WAIT_MS="50",
        **FAST_SETTINGS,
    )


def one_run(
    workdir: Path, sandbox: SandboxProcess, *, triggers: int, wait: bool, failover: bool
) -> dict[str, Any]:
    """One backlog through a fresh Sentinel group; with ``failover``, kill the primary in it."""
    campaign = f"fo-{uuid.uuid4().hex[:8]}"
    with SentinelGroup(down_after_ms=1000, replicas=REPLICAS) as group:
        env = _fleet_env(group, sandbox, wait)
        workers = [
            WorkerProcess(workdir, env, queue=env["CLIX_QUEUE"], pool="threads", concurrency=8)
            for _ in range(2)
        ]
        try:
            group.wait_until_watched()
            settings = fleet_settings(env)
            started = time.monotonic()  # the workers drain while the backlog is enqueued
            _enqueue(env, workdir, triggers, campaign)
            result: dict[str, Any] = {"mode": "WAIT 1" if wait else "no WAIT"}
            if failover:
                wait_until(lambda: len(_accepted(sandbox, campaign)) >= triggers // 3, 60, "load")
                killed_at = time.monotonic()
                old = group.kill_primary()
                result["left_at_kill"] = triggers - len(_accepted(sandbox, campaign))
                result["failover_s"] = round(group.wait_for_failover(old), 2)
            wait_until(
                lambda: len(_accepted(sandbox, campaign)) >= triggers, 300, "all sent", every_s=0.2
            )
            ended = time.monotonic()
            time.sleep(1 if failover else 0)  # late copies, if any, arrive now
            accepted = _accepted(sandbox, campaign)
            stats = store_client(settings).hgetall(KeySpace(settings.clix_key_prefix).stats)
            duplicates = sum(n - 1 for n in accepted.values())
            counted = int(stats.get(b"ambiguous_duplicates", 0))
            result.update(duplicates=duplicates, counted=counted, republished=_republished(workers))
            result["uncounted"] = max(0, duplicates - counted)
            if failover:
                result["recovery_s"] = round(ended - killed_at, 1)
            else:
                result["per_s"] = round(triggers / (ended - started), 1)
            return result
        finally:
            for worker in workers:
                worker.stop()


def commit_cost(wait: bool, commits: int = 2000) -> tuple[float, float]:
    """Claims + commits per second from one thread, and the commit's median in ms."""
    with SentinelGroup(replicas=REPLICAS) as group:
        settings = fleet_settings(clean_env(REDIS_URL=group.url()))
        store = IdempotencyStore(
            store_client(settings),
            KeySpace(f"rate{uuid.uuid4().hex[:6]}"),
            lease_ms=10_000,
            ttl_s=600,
            commit_replicas=1 if wait else 0,
        )
        commit_s: list[float] = []
        started = time.perf_counter()
        for number in range(commits):
            scope, owner = Scope("p", "c", f"k{number}"), new_owner("t")
            store.claim(scope, owner)
            before = time.perf_counter()
            store.commit(scope, owner, f"trigger-{number}")
            commit_s.append(time.perf_counter() - before)
        rate = commits / (time.perf_counter() - started)
        return rate, statistics.median(commit_s) * 1000


def main(argv: list[str] | None = None) -> int:
    """Run the failover bench and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="failovers per mode")
    parser.add_argument("--triggers", type=int, default=600, help="backlog per run")
    parser.add_argument("--latency-ms", type=int, default=20, help="sandbox answer time")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="clix-failover-"))
    sandbox = SandboxProcess(workdir, PROJECT_ID, API_KEY, "--latency-ms", str(args.latency_ms))
    try:
        for wait in (False, True):
            mode = "WAIT 1" if wait else "no WAIT"
            rate, median_ms = commit_cost(wait)
            print(f"{mode}: claim+commit {rate:.0f}/s, commit median {median_ms:.2f} ms (no Clix)")
            steady = one_run(workdir, sandbox, triggers=args.triggers, wait=wait, failover=False)
            print(f"{mode}: steady drain {steady['per_s']}/s ({args.triggers} triggers)")
            runs = []
            for number in range(args.runs):
                run = one_run(workdir, sandbox, triggers=args.triggers, wait=wait, failover=True)
                runs.append(run)
                print(f"{mode}: failover run {number + 1}: {run}", flush=True)
            print(
                f"{mode}: over {len(runs)} failovers: "
                f"{sum(r['duplicates'] for r in runs)} duplicate sends, "
                f"{sum(r['counted'] for r in runs)} counted ambiguous, "
                f"{sum(r['uncounted'] for r in runs)} from lost writes, "
                f"{sum(r['republished'] for r in runs)} lost messages re-published; failover "
                f"{statistics.median(r['failover_s'] for r in runs)} s, back to all sent "
                f"{statistics.median(r['recovery_s'] for r in runs)} s (medians)"
            )
    finally:
        sandbox.stop()
        print(f"logs of the workers and the sandbox: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
