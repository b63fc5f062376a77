"""Producer throughput: ``enqueue_trigger`` against a bare ``apply_async``, and the bulk path.

Run by :mod:`bench.suite` as ``python -m bench.enqueue N`` in a process of its
own, with the fleet's settings in its environment (``REDIS_URL``,
``CELERY_BROKER_URL``, ``CLIX_QUEUE``...), so the producer API is configured the
way an application configures it. Prints one JSON object.

``python -m bench.enqueue --stack [N]`` measures this section alone, the way
the suite does: it starts the suite's stack (bench/stack.py), runs the child
above against it and prints its JSON (default N: the suite's full size).

It runs twice: with the broker in the store's Redis (the README's default,
``CELERY_BROKER_URL`` unset: a publish writes its pending record in the script
that pushes the message) and with a broker Redis of its own (the record is a
round trip of its own before the publish). The top-level figures are the
default's; ``broker_apart`` holds the other run.

* ``apply_async``: a bare Celery app on the same broker and queue, a task named
  ``trigger_campaign``, the same kwargs; no validation, no pending record.
* ``enqueue_trigger``: the producer API, one call per trigger.
* ``enqueue_many``: the bulk path, per trigger.

Each is timed over N triggers after a warm-up, best of a few rounds (the
machine is shared: the best round is the least disturbed one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from bench.load import typical_trigger
from bench.stack import Stack

ROUNDS = 5
ROOT = Path(__file__).resolve().parents[1]


def _rate(send: Callable[[int, int], None], n: int, round_number: int) -> float:
    started = time.perf_counter()
    send(round_number * n, n)
    return n / (time.perf_counter() - started)


def main() -> int:
    if sys.argv[1:2] == ["--stack"]:
        return _with_stack(int(sys.argv[2]) if len(sys.argv) > 2 else STACK_TRIGGERS)
    n = int(sys.argv[1])
    from tasks import enqueue_many, enqueue_trigger

    queue = os.environ["CLIX_QUEUE"]
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ["REDIS_URL"]  # as Settings reads it
    bare = Celery("bare-producer", broker=broker)
    bare.conf.update(task_default_queue=queue)

    @bare.task(name="trigger_campaign")  # type: ignore[untyped-decorator]
    def bare_task(**_: Any) -> None:
        """Never runs here: only published."""

    def campaign(kind: str) -> str:
        return f"bench-enqueue-{kind}"

    def via_apply_async(first: int, count: int) -> None:
        for i in range(first, first + count):
            bare_task.apply_async(kwargs=typical_trigger(campaign("bare"), i))

    def via_enqueue_trigger(first: int, count: int) -> None:
        for i in range(first, first + count):
            enqueue_trigger(**typical_trigger(campaign("one"), i))

    def via_enqueue_many(first: int, count: int) -> None:
        triggers = (typical_trigger(campaign("many"), i) for i in range(first, first + count))
        for _ in enqueue_many(triggers):
            pass

    senders = {
        "apply_async": via_apply_async,
        "enqueue_trigger": via_enqueue_trigger,
        "enqueue_many": via_enqueue_many,
    }
    for number, send in enumerate(senders.values()):  # warm-up: connections, imports, caches
        send(10_000_000 + number * 1000, min(50, n))
    rates: dict[str, list[float]] = {name: [] for name in senders}
    for round_number in range(ROUNDS):
        for name, send in senders.items():
            rates[name].append(_rate(send, n, round_number))
    best = {name: max(values) for name, values in rates.items()}
    print(
        json.dumps(
            {
                "triggers": n,
                "rounds": ROUNDS,
                "per_s": {name: round(rate, 1) for name, rate in best.items()},
                "all_rounds_per_s": {k: [round(r, 1) for r in v] for k, v in rates.items()},
                "enqueue_trigger_vs_apply_async": round(
                    best["enqueue_trigger"] / best["apply_async"], 2
                ),
                "enqueue_many_vs_enqueue_trigger": round(
                    best["enqueue_many"] / best["enqueue_trigger"], 2
                ),
            }
        )
    )
    return 0


def enqueue_rates(stack: Stack, triggers: int) -> dict[str, Any]:
    """Both runs of bench/enqueue.py: the broker in the store (top level), and apart."""
    default = _child(stack, triggers, broker_is_store=True)
    default["broker"] = "the store's Redis (CELERY_BROKER_URL unset)"
    default["broker_apart"] = _child(stack, triggers, broker_is_store=False)
    return default


def _child(stack: Stack, triggers: int, *, broker_is_store: bool) -> dict[str, Any]:
    """bench/enqueue.py in a process of its own, configured through its environment."""
    run = stack.new_run("clix")
    env = dict(run.env)
    if broker_is_store:
        env.pop("CELERY_BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench.enqueue", str(triggers)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.enqueue failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


#: Triggers per round of ``--stack``: the suite's full size (bench.suite.FULL).
STACK_TRIGGERS = 1000


def _with_stack(triggers: int) -> int:
    """This section alone: start the suite's stack, measure, print the JSON."""
    with (
        tempfile.TemporaryDirectory(prefix="clix-bench-enqueue-") as workdir,
        Stack.running(Path(workdir)) as stack,
    ):
        print(json.dumps(enqueue_rates(stack, triggers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
