"""A real worker's log: JSON lines (CLIX_LOG_FORMAT=json) or text lines, one per outcome."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import wait_until

pytestmark = pytest.mark.integration

EVENT_FIELDS = ("outcome", "task_id", "campaign_id", "idempotency_key", "trigger_id", "attempt")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \w+ +\[[^\]]+\] ")


def json_lines(log: str) -> list[dict[str, Any]]:
    """The JSON objects of a worker log (Celery's start-up banner is plain text)."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))  # a line that starts like JSON must be JSON
    return found


def send_one(fleet: Fleet, campaign: str) -> tuple[str, str]:
    """Send one trigger, wait until it is done; return ``(task_id, trigger_id)``."""
    task_id = fleet.send(campaign_id=campaign, idempotency_key="k")
    scope = fleet.scope(campaign, "k")
    wait_until(lambda: fleet.store.status(scope).state == "done", 30, "the trigger to be done")
    trigger_id = fleet.store.status(scope).trigger_id
    assert trigger_id
    return task_id, trigger_id


def test_json_log_has_one_structured_line_per_outcome(
    own_fleet: Callable[..., Fleet], campaign: str, api_key: str
) -> None:
    fleet = own_fleet(CLIX_LOG_FORMAT="json")
    worker = fleet.start_worker()
    task_id, trigger_id = send_one(fleet, campaign)

    def sent_lines() -> list[dict[str, Any]]:
        return [
            line
            for line in json_lines(worker.log())
            if line.get("outcome") == "sent" and line.get("campaign_id") == campaign
        ]

    [sent] = wait_until(sent_lines, 10, "the worker's 'sent' line")
    assert {k: sent[k] for k in EVENT_FIELDS} == {
        "outcome": "sent",
        "task_id": task_id,
        "campaign_id": campaign,
        "idempotency_key": "k",
        "trigger_id": trigger_id,
        "attempt": 1,
    }
    assert isinstance(sent["latency_ms"], int | float)
    assert sent["latency_ms"] >= 0
    assert sent["level"] == "INFO"
    assert sent["logger"] == "clix.trigger"
    assert sent["ts"].endswith("Z")
    assert sent["process"].startswith("ForkPoolWorker")
    # Celery's own lines went through the same formatter
    assert any(line["message"].endswith(" ready.") for line in json_lines(worker.log()))
    worker.stop()
    assert api_key not in worker.log()


def test_text_log_keeps_key_value_pairs(
    own_fleet: Callable[..., Fleet], campaign: str, api_key: str
) -> None:
    fleet = own_fleet(CLIX_LOG_FORMAT="text")
    worker = fleet.start_worker(concurrency=1)
    task_id, trigger_id = send_one(fleet, campaign)

    def sent_line() -> list[str]:
        return [
            line
            for line in worker.log().splitlines()
            if "[clix.trigger] trigger outcome=sent" in line and campaign in line
        ]

    [line] = wait_until(sent_line, 10, "the worker's 'sent' line")
    assert TEXT_LINE.match(line)
    for pair in (f"task_id={task_id}", f"campaign_id={campaign}", f"trigger_id={trigger_id}"):
        assert pair in line
    assert "idempotency_key=k " in line
    assert "latency_ms=" in line
    assert not json_lines(worker.log())
    worker.stop()
    assert api_key not in worker.log()
