"""Scheduled and cancelled triggers through real workers, Redis and the sandbox.

The on-time test schedules ``CLIX_TEST_SCHEDULED`` triggers (default 200, to keep
CI short; the issue's figure is 1,000: ``CLIX_TEST_SCHEDULED=1000``) 5-15 s
ahead on a fleet of two workers and SIGKILLs one of them in the middle.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from config.celery_app import app
from tasks import cancel_trigger, enqueue_trigger
from tasks.schedule import ScheduleStore
from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, cli, cli_json, wait_until

pytestmark = pytest.mark.integration

SCHEDULED = int(os.environ.get("CLIX_TEST_SCHEDULED", "200"))


def _sent(sandbox: SandboxProcess, campaign: str) -> Counter[int]:
    """How often each trigger (property ``n``) was accepted by the sandbox."""
    return Counter(
        r["body"]["properties"]["n"] for r in sandbox.requests(campaign) if r["status"] == 200
    )


def test_scheduled_triggers_are_sent_once_never_early_and_on_time_across_a_sigkill(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str
) -> None:
    fleet = own_fleet(CLIX_VISIBILITY_TIMEOUT_S="20")
    doomed = fleet.start_worker(concurrency=2)
    fleet.start_worker(concurrency=2)
    schedule = ScheduleStore(fleet.redis(), fleet.keys, ttl_s=3_600)
    rng = random.Random(11)
    due_s: dict[int, float] = {}
    for n in range(SCHEDULED):
        kwargs = {"campaign_id": campaign, "idempotency_key": f"s{n}", "properties": {"n": n}}
        scheduled = schedule.schedule(kwargs, delay_ms=rng.randint(5_000, 15_000))
        assert scheduled.taken
        assert scheduled.send_at_ms is not None
        due_s[n] = scheduled.send_at_ms / 1000
    kill_at = min(due_s.values()) + 5  # the middle of the run
    time.sleep(max(0.0, kill_at - time.time()))
    doomed.kill()
    wait_until(
        lambda: len(_sent(sandbox, campaign)) == SCHEDULED, 90, "every scheduled trigger sent", 0.5
    )
    time.sleep(2)  # anything sent twice would show now

    sent = _sent(sandbox, campaign)
    assert set(sent) == set(due_s)
    assert [n for n, count in sent.items() if count > 1] == []
    first_sent = {}
    for request in sandbox.requests(campaign):
        if request["status"] == 200:
            n = request["body"]["properties"]["n"]
            first_sent[n] = min(first_sent.get(n, request["at"]), request["at"])
    late_s = sorted(first_sent[n] - due_s[n] for n in due_s)
    assert late_s[0] >= 0, f"sent {-late_s[0]:.3f} s early"
    # "on time" is measured, not asserted (the benchmark reports it); the bound
    # here is generous, for a shared 2-core machine: a message the killed worker
    # had fetched comes back after the visibility timeout (20 s here), and what
    # the bound catches is a trigger left behind beyond that
    on_time = sum(1 for late in late_s if late <= 1.0)
    print(
        f"\n{SCHEDULED} scheduled: p50 {late_s[len(late_s) // 2] * 1000:.0f} ms, "
        f"p99 {late_s[int(len(late_s) * 0.99) - 1] * 1000:.0f} ms, "
        f"max {late_s[-1] * 1000:.0f} ms late; {on_time} within 1 s"
    )
    assert late_s[-1] <= 20 + 10
    assert schedule.depth() == 0


def test_cancelling_half_of_200_scheduled_triggers_sends_exactly_the_other_half(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    for n in range(200):
        enqueue_trigger(campaign, f"c{n}", properties={"n": n}, delay_s=6)
    status = cli_json(fleet.env, "status", campaign, "c0")
    assert status["state"] == "scheduled"
    assert status["send_at"]
    cancelled = {n for n in range(200) if n % 2 == 0}
    for n in sorted(cancelled):
        assert cancel_trigger(campaign, f"c{n}").cancelled
    wait_until(lambda: len(_sent(sandbox, campaign)) >= 100, 60, "the kept half sent", 0.5)
    time.sleep(2)  # a cancelled one sent late would show now
    sent = _sent(sandbox, campaign)
    assert set(sent) == set(range(200)) - cancelled
    assert max(sent.values()) == 1
    assert cli_json(fleet.env, "status", campaign, "c0")["state"] == "cancelled"

    done = cli(fleet.env, "cancel", campaign, "c1")
    assert done.returncode == 1
    assert "done" in done.stdout
    again = cli(fleet.env, "cancel", campaign, "c0", "--json")
    assert again.returncode == 0  # it will not be sent: cancelled before


def test_a_celery_countdown_goes_on_the_schedule_not_into_worker_memory(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    asked = time.time()
    result = app.send_task(
        "trigger_campaign",
        kwargs={"campaign_id": campaign, "idempotency_key": "cd", "properties": {"n": 1}},
        countdown=8,  # the status command below starts a Python: seconds on a busy machine
    )
    assert cli_json(fleet.env, "status", campaign, "cd")["state"] == "scheduled"
    assert time.time() < asked + 8, "the status came too late to tell"
    assert result.get(timeout=30) == {
        "trigger_id": wait_until(
            lambda: fleet.store.status(fleet.scope(campaign, "cd")).trigger_id, 30, "done"
        ),
        "deduplicated": False,
    }
    [request] = sandbox.requests(campaign)
    assert request["at"] >= asked + 8 - 0.01


def test_status_history_lists_every_attempt_of_a_trigger_that_needed_three(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    sandbox.script(campaign, {"status": 503}, {"status": 502})
    enqueue_trigger(campaign, "h1", properties={"n": 1}).get(timeout=30)
    status = cli_json(fleet.env, "status", campaign, "h1", "--history")
    assert status["state"] == "done"
    assert [a["status"] for a in status["attempts"]] == [503, 502, 200]
    assert [a["attempt"] for a in status["attempts"]] == [1, 2, 3]
    assert all(a["worker"] and a["latency_ms"] >= 0 for a in status["attempts"])
    human = cli(fleet.env, "status", campaign, "h1", "--history")
    assert "3 attempt(s)" in human.stdout
