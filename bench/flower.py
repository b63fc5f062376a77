"""What Flower costs: the README's worker at 0 ms with Flower attached, against without.

The worker sends task events whether or not anybody listens (they are how
Flower sees tasks); a listening Flower decodes every one of them, on the same
cores here. Flower (``celery -A worker flower``) is started on the stack's
broker before the worker and watches every point; its CPU time is taken over
the points and divided by the requests they saw.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import drain
from bench.drain import Point
from bench.stack import Stack, process_tree_cpu_s
from tests.integration.processes import wait_until
from worker.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
FLOWER = [sys.executable, "-m", "celery", "-A", "worker", "flower"]
#: Flower's login here (it refuses to run without one)
LOGIN = ("bench", "bench")


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/workers", auth=LOGIN, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def flower_attached(stack: Stack) -> Iterator[subprocess.Popen[bytes]]:
    """Flower on the stack's broker, answering; stopped on the way out."""
    port = free_port()
    env = {**stack.new_run("clix").env, "FLOWER_BASIC_AUTH": ":".join(LOGIN)}
    log = (stack.workdir / f"flower-{port}.log").open("wb")
    proc = subprocess.Popen(
        [*FLOWER, f"--port={port}", "--address=127.0.0.1"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}"), 60, "Flower", every_s=0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def measure(
    stack: Stack, without_per_s: float | None, *, runs: int, **options: Any
) -> dict[str, Any]:
    """The README's worker at 0 ms, ``runs`` times, with Flower watching."""
    point = Point("clix", None, None, 0)
    with flower_attached(stack) as flower:
        cpu_before = process_tree_cpu_s(flower.pid)
        taken = [drain.measure(stack, point, **options) for _ in range(runs)]
        flower_cpu_s = process_tree_cpu_s(flower.pid) - cpu_before
    rates = [p["triggers_per_s"] for p in taken]
    requests = sum(p["requests"] for p in taken)
    with_per_s = round(statistics.median(rates), 1)
    return {
        "without_per_s": without_per_s,
        "with_per_s": with_per_s,
        "runs": rates,
        "ratio": round(with_per_s / without_per_s, 2) if without_per_s else None,
        "flower_cpu_ms_per_trigger": round(flower_cpu_s * 1000 / requests, 3) if requests else None,
    }
