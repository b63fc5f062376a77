"""What DLQ listings show: pii hidden in the trigger and in ``raw`` bodies."""

from __future__ import annotations

import json
from typing import Any

from tasks.dlq_display import shown

SECRET_MAIL = "ada@example.com"


def entry_with_raw(raw: str, **more: Any) -> dict[str, Any]:
    return {
        "id": "1700000000000-abcdef01",
        "campaign_id": None,
        "idempotency_key": None,
        "reason": "invalid_payload",
        "trigger": None,
        "raw": raw,
        **more,
    }


def test_raw_json_body_hides_personal_properties_and_keeps_the_rest() -> None:
    body = json.dumps(
        [
            [],
            {
                "campaign_id": "c1",
                "idempotency_key": "k1",
                "properties": {
                    "email": SECRET_MAIL,
                    "order_id": "ORD-1",
                    "note": "+1 415 555 0100",
                },
            },
            {},
        ]
    )
    raw = shown(entry_with_raw(body))["raw"]
    assert SECRET_MAIL not in raw
    assert "415 555" not in raw
    decoded = json.loads(raw)
    assert decoded[1]["properties"]["order_id"] == "ORD-1"
    assert decoded[1]["properties"]["email"] == "[redacted]"
    assert decoded[1]["campaign_id"] == "c1"


def test_raw_json_body_hides_the_plans_pii_keys() -> None:
    body = json.dumps({"kwargs": {"properties": {"store_location": "SF", "loyalty_tier": "gold"}}})
    out = shown(entry_with_raw(body, pii=["loyalty_tier"]), ["store_location"])
    decoded = json.loads(out["raw"])
    assert decoded["kwargs"]["properties"] == {
        "store_location": "[redacted]",
        "loyalty_tier": "[redacted]",
    }


def test_raw_body_that_is_not_json_is_hidden_whole() -> None:
    body = 'not json {"email": "' + SECRET_MAIL + '"'
    out = shown(entry_with_raw(body))
    assert SECRET_MAIL not in out["raw"]
    assert str(len(body.encode())) in out["raw"]


def test_shown_leaves_the_stored_entry_unchanged() -> None:
    body = json.dumps({"email": SECRET_MAIL})
    entry = entry_with_raw(body)
    shown(entry)
    assert entry["raw"] == body
