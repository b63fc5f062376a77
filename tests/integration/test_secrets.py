"""The API key is in no log line, broker message, ledger or DLQ entry, exception or CLI output."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, cli, redis_dump, wait_until

pytestmark = pytest.mark.integration


def test_api_key_never_leaves_the_http_header(
    own_fleet: Callable[..., Fleet], sandbox: SandboxProcess, campaign: str, api_key: str
) -> None:
    fleet = own_fleet(CLIX_AUTH_PROBE_S="1")
    worker = fleet.start_worker()
    sandbox.script(
        campaign,
        {"status": 503},
        {"status": 503},
        {"status": 503},
        {"action": "drop"},
        {"status": 401},  # opens the breaker; the probe a second later gets a 200
    )
    producer = fleet.producer()
    errors = []
    for key in (
        "exhausted",
        "dropped-then-ok",
        "unauthorized-then-ok",
    ):  # one at a time: the script is FIFO
        result = producer.send_task(
            "trigger_campaign", kwargs={"campaign_id": campaign, "idempotency_key": key}
        )
        try:
            result.get(timeout=30)
        except Exception as exc:  # noqa: BLE001 - collecting failures to grep them
            errors.append(f"{type(exc).__name__}: {exc}")
    fleet.send(campaign_id=campaign, idempotency_key="bad", audience={"broadcast": "yes"})
    # a request pending in the broker, never consumed: its message is in the dump too
    producer.send_task(
        "trigger_campaign",
        kwargs={"campaign_id": campaign, "idempotency_key": "q"},
        queue=f"{fleet.queue}.unconsumed",
    )
    wait_until(lambda: len(fleet.dlq.entries()) == 2, 30, "two DLQ entries")
    assert len(errors) == 1  # the exhausted one; the 401 one waited for the key and went out

    listing = cli(fleet.env, "dlq", "list", "--json")
    status = cli(fleet.env, "status", campaign, "dropped-then-ok", "--json")
    worker.stop()
    haystacks = {
        "worker log": worker.log(),
        "redis (broker, ledger, DLQ, results)": redis_dump(fleet.redis_url),
        "exceptions": "\n".join(errors),
        "cli": listing.stdout + listing.stderr + status.stdout + status.stderr,
    }
    assert "trigger_campaign" in haystacks["redis (broker, ledger, DLQ, results)"]
    assert "401" in haystacks["worker log"]
    for where, text in haystacks.items():
        assert text, f"nothing captured from {where}"
        assert api_key not in text, f"the API key leaked into {where}"
