"""CHAOS SMOKE TEST: ``bench/chaos.py --quick``, every promise under faults, in CI.

Two runs of about 65 s each (select them with ``-m chaos``, skip them with
``-m "not chaos"``): real Redis servers for the store and the broker, prefork
workers (or the default deployment: the broker in the store, the README's
pool of threads), a proxy that cuts the store, the sandbox misbehaving, three
workers SIGKILLed and replaced, Redis and the
broker restarted, producers enqueueing through it all (one 60 s behind), one
answer held past the lease. The command's one-line verdict is checked field
by field.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.processes import ROOT, clean_env

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

FIELDS = ("sent", "delivered", "lost", "duplicate_sends", "ambiguous_counted", "dlq")
QUICK_TRIGGERS = 600
QUICK_POISON = 6  # 1% of 600: 3 rejected by Clix, 3 undecodable


def _run_quick_chaos(report: Path, *layout: str) -> tuple[int, str, str]:
    command = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--quick", "--seed", "1"]
    proc = subprocess.Popen(
        [*command, *layout, "--json", str(report)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=270)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the command stops its fleet on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=90)
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the quick chaos run took over 270 s: {err[-3000:]}")
    return proc.returncode, out, err


@pytest.mark.parametrize(
    "layout",
    [(), ("--broker-in-store", "--default-pool")],
    # the second is the default deployment: the queue in the store, the README's threads
    ids=["broker-apart-prefork", "default-deployment"],
)
def test_chaos_quick_run_loses_nothing_duplicates_only_ambiguously_and_dead_letters_the_poison(
    tmp_path: Path, layout: tuple[str, ...]
) -> None:
    code, out, err = _run_quick_chaos(tmp_path / "chaos.json", *layout)

    lines = [line for line in out.splitlines() if line.startswith("sent=")]
    assert len(lines) == 1, f"no verdict line (exit {code}): {err[-3000:]}"
    numbers = {name: int(value) for name, value in (f.split("=") for f in lines[0].split())}
    assert set(FIELDS) | {"expected_dlq", "store_fault_duplicates"} <= set(numbers)
    assert numbers["sent"] == QUICK_TRIGGERS
    assert numbers["expected_dlq"] == QUICK_POISON
    evidence = json.loads((tmp_path / "chaos.json").read_text())["verdict"]["details"]
    summary = f"{lines[0]}\n{err[-1500:]}\nlost: {evidence['lost_by_state']}"

    assert numbers["lost"] == 0, summary
    assert numbers["duplicate_sends"] <= numbers["ambiguous_counted"], summary
    assert numbers["store_fault_duplicates"] == 0, f"{summary}\n{evidence['duplicates']}"
    assert numbers["dlq"] == numbers["expected_dlq"], f"{summary}\n{evidence['dlq_unexpected']}"
    # the producers enqueued through faults (not before them) and got every trigger in
    assert evidence["enqueue"]["faults_while_enqueueing"], evidence["enqueue"]
    assert evidence["enqueue"]["gave_up"] == [], evidence["enqueue"]
    assert code == 0, summary
