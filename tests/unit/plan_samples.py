"""Sample plans and triggers shared by the plan tests (test_plan*.py, test_pii.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "plans"
SAMPLE_DIR = ROOT / "examples" / "store-pickup"
SAMPLE_PLAN = SAMPLE_DIR / ".clix" / "api-trigger-plan.json"
STORE_PICKUP = "019aa002-5c1e-7d3a-9f00-5t0rep1ckup1"


def plan_data(**changes: Any) -> dict[str, Any]:
    """A valid plan (the store-pickup contract, broadcast), with top-level changes."""
    data: dict[str, Any] = {
        "campaign_id": "camp-1",
        "audience": {"mode": "broadcast"},
        "dynamic_filter_keys": ["store_location"],
        "properties": {
            "store_location": {"type": "string", "required": True, "example": "San Francisco"},
            "order_id": {"type": "string", "required": True},
            "customer_name": {"type": "string", "pii": True},
            "item_count": {"type": "number", "required": True, "example": 3},
            "pickup_time": {"type": "datetime", "example": "2026-11-23T17:30:00Z"},
            "gift": {"type": "boolean"},
        },
    }
    data.update(changes)
    return data


def trigger(**changes: Any) -> dict[str, Any]:
    """Kwargs of a trigger that satisfies :func:`plan_data`, with top-level changes."""
    kwargs: dict[str, Any] = {
        "campaign_id": "camp-1",
        "idempotency_key": "order-1",
        "audience": {"broadcast": True},
        "properties": {
            "store_location": "San Francisco",
            "order_id": "ORD-1",
            "customer_name": "Dana Kim",
            "item_count": 3,
            "pickup_time": "2026-11-23T17:30:00Z",
        },
    }
    kwargs.update(changes)
    return kwargs


def with_properties(**changes: Any) -> dict[str, Any]:
    """A trigger whose properties are changed; a value of ``...`` removes the key."""
    kwargs = trigger()
    for name, value in changes.items():
        if value is ...:
            kwargs["properties"].pop(name)
        else:
            kwargs["properties"][name] = value
    return kwargs


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
