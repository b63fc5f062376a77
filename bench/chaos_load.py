"""The triggers of a chaos run and how they are sent.

Of ``n`` triggers, 5% reuse the key of an earlier one (a second message for a
key: it must never send again) and 1% are poison, half of each kind:

* *rejected*: valid for the producer, sent to a campaign the sandbox answers
  400 (a scripted answer per request): the worker must dead-letter it, once;
* *raw*: published straight to the broker with a body no worker can decode:
  the DLQ must hold it with its raw body.

The rest are unique valid triggers. Two producers enqueue them while the
faults happen, through the store proxy, retrying what raised
(bench/chaos_producer.py); one of them, with every tenth trigger, runs with
its clock 60 s behind, under libfaketime's ``faketime`` when it is installed.
Each trigger carries its key in ``properties.key`` so the sandbox's records say
which key a request was for.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue

__all__ = ["CLOCK_SKEW_S", "Load", "finish_producers", "key_of", "plan_load", "start_producers"]

_ROOT = Path(__file__).resolve().parents[1]
#: How far behind the skewed producer's clock runs.
CLOCK_SKEW_S = 60
_SKEWED_SHARE = 10  # every tenth trigger goes through the skewed producer


@dataclass
class Load:
    """What is sent and what the verdict must find."""

    campaign: str
    poison_campaign: str
    marker: str  # in every raw poison body
    triggers: list[dict[str, Any]] = field(default_factory=list)  # via the producer API
    unique_keys: list[str] = field(default_factory=list)  # valid keys, each once
    reused: int = 0
    rejected_keys: list[str] = field(default_factory=list)
    raw_count: int = 0
    sent: int = 0
    clock_skew: str = "not run"
    retried_enqueues: int = 0  # enqueues that raised during a fault and were called again
    gave_up: list[str] = field(default_factory=list)  # keys never enqueued: not owed
    enqueue_errors: dict[str, int] = field(default_factory=dict)  # what the producers saw
    enqueue_window: tuple[float, float] = (0.0, 0.0)  # wall clock: first to last producer

    @property
    def expected_dlq(self) -> int:
        """Every poison trigger, and nothing else."""
        return len(self.rejected_keys) + self.raw_count


def plan_load(n: int, run_id: str, rng: random.Random) -> Load:
    """``n`` triggers: 1% poison (half rejected, half raw), 5% reused keys, the rest unique."""
    poison = max(2, round(n * 0.01))
    reused = round(n * 0.05)
    load = Load(
        campaign=f"chaos-{run_id}",
        poison_campaign=f"chaos-poison-{run_id}",
        marker=f"chaos-raw-{run_id}",
    )
    load.raw_count = poison // 2
    load.rejected_keys = [f"p{i}" for i in range(poison - load.raw_count)]
    unique = n - poison - reused
    load.unique_keys = [f"k{i}" for i in range(unique)]
    valid: list[dict[str, Any]] = [
        _trigger(load.campaign, key, i) for i, key in enumerate(load.unique_keys)
    ]
    for copy in range(reused):
        # a second message for a key already in the stream, somewhere after it
        original = rng.randrange(unique)
        position = rng.randrange(original + 1, len(valid) + 1)
        valid.insert(position, _trigger(load.campaign, f"k{original}", unique + copy, copy=True))
    load.reused = reused
    for key in load.rejected_keys:
        valid.insert(rng.randrange(len(valid) + 1), _trigger(load.poison_campaign, key, 0))
    load.triggers = valid
    return load


def _trigger(campaign: str, key: str, n: int, *, copy: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {"key": key, "n": n}
    if copy:
        properties["copy"] = True
    return {
        "campaign_id": campaign,
        "idempotency_key": key,
        "audience": {"targets": [{"project_user_id": f"u{n}"}]},
        "properties": properties,
    }


def start_producers(
    load: Load, env: dict[str, str], workdir: Path, broker_url: str, queue: str, *, rate: float
) -> list[subprocess.Popen[str]]:
    """Start the two producers (one skewed) enqueueing at ``rate`` in all; publish the raw poison.

    They run through the faults (bench/chaos_producer.py): collect them with
    :func:`finish_producers` once the faults are over.
    """
    normal = [t for i, t in enumerate(load.triggers) if i % _SKEWED_SHARE]
    skewed = [t for i, t in enumerate(load.triggers) if not i % _SKEWED_SHARE]
    prefix: list[str] = []
    faketime = shutil.which("faketime")
    if faketime:
        prefix = [faketime, "-f", f"-{CLOCK_SKEW_S}s"]
        load.clock_skew = f"-{CLOCK_SKEW_S}s (libfaketime)"
    else:
        load.clock_skew = "unavailable: install faketime (apt-get install faketime)"
    skew_env = {**env, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    now = time.time()
    load.enqueue_window = (now, now)
    share = 1 / _SKEWED_SHARE  # each producer keeps its share of the rate
    runs = [
        _start_enqueue(normal, [], env, workdir / "triggers.jsonl", rate * (1 - share)),
        _start_enqueue(skewed, prefix, skew_env, workdir / "triggers-skewed.jsonl", rate * share),
    ]
    _publish_raw(load, broker_url, queue)
    load.sent = load.raw_count
    return runs


def finish_producers(load: Load, runs: list[subprocess.Popen[str]], timeout_s: float) -> None:
    """Wait for the producers; count what they enqueued, retried and gave up."""
    for proc in runs:
        out, err = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            print(f"chaos: a producer failed ({proc.returncode}): {err[-2000:]}", file=sys.stderr)
            continue
        summary = json.loads(out)
        load.sent += int(summary["enqueued"])
        load.retried_enqueues += int(summary["retried"])
        load.gave_up += summary["gave_up"]
        start, end = load.enqueue_window
        load.enqueue_window = (start, max(end, start + float(summary["elapsed_s"])))
        for name, count in summary["errors"].items():
            load.enqueue_errors[name] = load.enqueue_errors.get(name, 0) + int(count)


def _start_enqueue(
    triggers: list[dict[str, Any]], prefix: list[str], env: dict[str, str], path: Path, rate: float
) -> subprocess.Popen[str]:
    path.write_text("".join(json.dumps(t) + "\n" for t in triggers))
    command = [*prefix, sys.executable, "-m", "bench.chaos_producer", str(path), f"--rate={rate}"]
    return subprocess.Popen(
        command,
        env=env,
        cwd=_ROOT,  # bench/ is not installed: run from the checkout
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _publish_raw(load: Load, broker_url: str, queue_name: str) -> None:
    queue = Queue(queue_name, Exchange(queue_name, type="direct"), routing_key=queue_name)
    with Connection(broker_url) as conn:
        producer = conn.Producer()
        for i in range(load.raw_count):
            producer.publish(
                f'{{"{load.marker}-{i}": not json'.encode(),
                exchange=queue.exchange,
                routing_key=queue_name,
                content_type="application/json",
                content_encoding="utf-8",
                declare=[queue],
                headers={"task": "trigger_campaign", "id": f"{load.marker}-{i}"},
            )


def key_of(record: dict[str, Any]) -> str | None:
    """The idempotency key a sandbox record was for (from ``properties.key``)."""
    body = record.get("body")
    if isinstance(body, dict) and isinstance(body.get("properties"), dict):
        key = body["properties"].get("key")
        return str(key) if key is not None else None
    return None
