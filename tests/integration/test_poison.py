"""Messages that can never succeed land in the dead-letter queue; the worker keeps going."""

from __future__ import annotations

import pytest
from kombu import Connection, Exchange, Queue

from tasks import enqueue_trigger
from tests.integration.conftest import Fleet
from tests.integration.processes import SandboxProcess, cli, wait_until

pytestmark = pytest.mark.integration


def _entries_for(fleet: Fleet, predicate: object) -> list[dict[str, object]]:
    return [e for e in fleet.dlq.entries() if predicate(e)]  # type: ignore[operator]


def test_undecodable_messages_are_dead_lettered_with_their_raw_body(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    queue = Queue(fleet.queue, Exchange(fleet.queue, type="direct"), routing_key=fleet.queue)
    marker = f"{campaign}-garbage"
    with Connection(fleet.redis_url) as conn:
        producer = conn.Producer()
        producer.publish(
            f'{{"{marker}": not json'.encode(),
            exchange=queue.exchange,
            routing_key=fleet.queue,
            content_type="application/json",
            content_encoding="utf-8",
            declare=[queue],
            headers={"task": "trigger_campaign", "id": f"{marker}-id"},
        )
        producer.publish(
            b"\x00\xff" + marker.encode(),
            exchange=queue.exchange,
            routing_key=fleet.queue,
            content_type="application/x-unknown",
            content_encoding="binary",
            declare=[queue],
        )
    entries = wait_until(
        lambda: (
            [e for e in fleet.dlq.entries() if marker in str(e.get("raw"))]
            or [e for e in fleet.dlq.entries() if e.get("task_id") == f"{marker}-id"]
        ),
        30,
        "the undecodable messages in the DLQ",
    )
    entries = wait_until(
        lambda: (
            len(
                [
                    e
                    for e in fleet.dlq.entries()
                    if e.get("trigger") is None
                    and e.get("raw")
                    and (marker in e["raw"] or e["raw"].startswith("base64:"))
                ]
            )
            >= 2
            and fleet.dlq.entries()
        ),
        30,
        "both undecodable messages in the DLQ",
    )
    garbage = next(e for e in entries if marker in str(e.get("raw")))
    assert garbage["reason"] == "invalid_payload"
    assert garbage["campaign_id"] is None
    assert garbage["status_code"] is None
    assert "could not be decoded" in garbage["error"]

    refused = cli(fleet.env, "dlq", "replay", garbage["id"])
    assert refused.returncode == 1
    assert "cannot be replayed" in refused.stdout + refused.stderr
    assert fleet.dlq.get(garbage["id"]) is not None

    # the worker is still alive and delivering
    assert enqueue_trigger(campaign, "after-poison").get(timeout=30)["deduplicated"] is False
    assert len(sandbox.requests(campaign)) == 1


def test_invalid_kwargs_from_a_foreign_producer_are_dead_lettered_without_a_request(
    fleet: Fleet, sandbox: SandboxProcess, campaign: str
) -> None:
    fleet.send(
        campaign_id=campaign,
        idempotency_key="k",
        audience={"broadcast": True, "targets": [{"device_id": "d"}]},
    )
    fleet.send(campaign_id=campaign, idempotency_key="k2", colour="blue")
    entries = wait_until(
        lambda: (lambda found: found if len(found) == 2 else None)(
            [e for e in fleet.dlq.entries() if e["campaign_id"] == campaign]
        ),
        30,
        "two invalid_payload entries",
    )
    assert {e["reason"] for e in entries} == {"invalid_payload"}
    errors = " | ".join(str(e["error"]) for e in entries)
    assert "audience" in errors
    assert "colour: unknown field" in errors
    assert sandbox.requests(campaign) == []
    assert enqueue_trigger(campaign, "valid").get(timeout=30)["deduplicated"] is False


def test_producer_refuses_an_invalid_trigger_naming_the_field(fleet: Fleet, campaign: str) -> None:
    with pytest.raises(ValueError, match=r"audience\.targets\[0\]"):
        enqueue_trigger(
            campaign, "k", audience={"targets": [{"device_id": "d", "project_user_id": "u"}]}
        )
    refused = cli(fleet.env, "enqueue", "bad/id", "k")
    assert refused.returncode == 1
    assert "campaign_id" in refused.stderr
