"""Redacting pii properties and spotting pii-like keys (tasks/pii.py)."""

from __future__ import annotations

import pytest

from tasks.pii import REDACTED, pii_like_keys, redact
from tasks.plans import TriggerPlan
from tests.unit.plan_samples import plan_data, trigger

# --- redaction ----------------------------------------------------------------------------


def test_redact_replaces_pii_values_and_leaves_the_rest() -> None:
    kwargs = trigger()
    shown = redact(kwargs, TriggerPlan.from_data(plan_data()).pii_keys)
    assert shown["properties"]["customer_name"] == REDACTED
    assert shown["properties"]["store_location"] == "San Francisco"
    assert shown["campaign_id"] == "camp-1"
    assert kwargs["properties"]["customer_name"] == "Dana Kim"  # the original is untouched


def test_redact_without_a_plan_returns_an_unchanged_copy() -> None:
    kwargs = trigger()
    shown = redact(kwargs, ())
    assert shown == kwargs
    assert shown is not kwargs
    assert shown["properties"] is not kwargs["properties"]


def test_redact_takes_property_names_without_a_plan() -> None:
    """A DLQ entry keeps only the names of its pii properties, not its plan."""
    kwargs = trigger()
    shown = redact(kwargs, ["customer_name", "not_sent"])
    assert shown["properties"]["customer_name"] == REDACTED
    assert "not_sent" not in shown["properties"]
    assert shown["properties"]["order_id"] == "ORD-1"
    assert kwargs["properties"]["customer_name"] == "Dana Kim"


def test_redact_survives_a_trigger_without_properties() -> None:
    kwargs = {"campaign_id": "camp-1", "idempotency_key": "k"}
    assert redact(kwargs, TriggerPlan.from_data(plan_data()).pii_keys) == kwargs


# --- pii-like keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "email",
        "e_mail",
        "customerEmail",
        "E-Mail",
        "mail",
        "phone",
        "phone_number",
        "mobile",
        "msisdn",
        "tel",
        "name",
        "first_name",
        "lastName",
        "full_name",
        "customer_name",
        "username",
        "surname",
    ],
)
def test_pii_like_keys_flags_email_phone_and_name_keys(key: str) -> None:
    assert pii_like_keys({key: 1}) == [key]


@pytest.mark.parametrize(
    "key", ["store_name", "product_name", "order_id", "item_count", "hotel_id", "store_location"]
)
def test_pii_like_keys_leaves_other_keys_alone(key: str) -> None:
    assert pii_like_keys({key: "x"}) == []


@pytest.mark.parametrize(
    ("value", "flagged"),
    [
        ("dana@example.com", True),
        ("+1 415 555 0123", True),
        ("(415) 555-0123", True),
        ("+821012345678", True),
        ("ORD-12345", False),
        ("12345678", False),
        ("2026-11-23", False),
        ("192.168.10.1", False),
        ("San Francisco", False),
    ],
)
def test_pii_like_keys_flags_email_and_phone_values(value: str, flagged: bool) -> None:
    assert pii_like_keys({"contact": value}) == (["contact"] if flagged else [])
