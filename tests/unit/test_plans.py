"""Loaded plans, the registry and checking triggers against plans (tasks/plans.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from config.settings import ConfigurationError
from tasks.pii import REDACTED
from tasks.plan_file import validate_plan_file
from tasks.plan_rules import PlanError
from tasks.plans import PlanRegistry, TriggerPlan, discover_plan_files
from tests.unit.plan_samples import (
    FIXTURES,
    ROOT,
    SAMPLE_PLAN,
    STORE_PICKUP,
    plan_data,
    trigger,
    with_properties,
    write,
)


def check(kwargs: dict[str, Any], *, strict: bool = False, **changes: Any) -> list[str]:
    errors, _ = TriggerPlan.from_data(plan_data(**changes)).check(kwargs, strict=strict)
    return errors


# --- parsed plans -------------------------------------------------------------------------


def test_store_pickup_sample_plan_is_valid_and_matches_the_docs_example() -> None:
    assert validate_plan_file(SAMPLE_PLAN) == []
    parsed = TriggerPlan.from_file(SAMPLE_PLAN)
    assert parsed.campaign_id == STORE_PICKUP
    assert parsed.audience_mode == "broadcast"
    assert parsed.dynamic_filter_keys == ("store_location",)
    assert set(parsed.properties) == {
        "store_location",
        "order_id",
        "customer_name",
        "item_count",
        "pickup_time",
    }
    assert parsed.pii_keys == {"customer_name"}
    assert parsed.properties["item_count"].type == "number"
    assert parsed.properties["pickup_time"].type == "datetime"


def test_plan_without_audience_is_in_default_mode() -> None:
    data = plan_data()
    del data["audience"]
    assert TriggerPlan.from_data(data).audience_mode == "default"


def test_targets_plan_with_one_id_per_target_is_valid() -> None:
    data = plan_data(audience={"mode": "targets", "targets": [{"device_id": "d1"}]})
    assert TriggerPlan.from_data(data).targets == ({"device_id": "d1"},)


def test_from_data_raises_plan_error_listing_every_problem() -> None:
    data = plan_data(campaign_id="", dynamic_filter_keys=["a", "b", "c", "d"])
    with pytest.raises(PlanError) as caught:
        TriggerPlan.from_data(data, source=Path("p.json"))
    assert isinstance(caught.value, ConfigurationError)
    assert {p.path for p in caught.value.problems} >= {"$.campaign_id", "$.dynamic_filter_keys"}
    assert str(caught.value).startswith("invalid trigger plan p.json: $.campaign_id")


# --- registry -----------------------------------------------------------------------------


def test_registry_loads_plans_from_folders_recursively(tmp_path: Path) -> None:
    write(tmp_path / "a" / ".clix" / "api-trigger-plan.json", plan_data(campaign_id="a"))
    write(tmp_path / "b" / "store.api-trigger-plan.json", plan_data(campaign_id="b"))
    write(tmp_path / "c" / "other.json", plan_data(campaign_id="c"))
    (tmp_path / "c" / "notes.txt").write_text("not json, not a plan")
    write(tmp_path / ".hidden" / "api-trigger-plan.json", plan_data(campaign_id="h"))
    write(tmp_path / "node_modules" / "api-trigger-plan.json", plan_data(campaign_id="n"))
    registry = PlanRegistry.load(str(tmp_path))
    assert sorted(p.campaign_id for p in registry) == ["a", "b", "c"]


def test_a_folder_of_plans_named_for_their_campaigns_loads_every_json_file(
    tmp_path: Path,
) -> None:
    write(tmp_path / "store_pickup.json", plan_data(campaign_id="pickup"))
    write(tmp_path / "welcome.json", plan_data(campaign_id="welcome"))
    registry = PlanRegistry.load(str(tmp_path))
    assert sorted(p.campaign_id for p in registry) == ["pickup", "welcome"]


def test_registry_spec_lists_files_and_folders_by_pathsep_or_comma(tmp_path: Path) -> None:
    one = write(tmp_path / "one.json", plan_data(campaign_id="one"))
    write(tmp_path / "dir" / "api-trigger-plan.json", plan_data(campaign_id="two"))
    three = write(tmp_path / "three.json", plan_data(campaign_id="three"))
    registry = PlanRegistry.load(f"{one}{os.pathsep}{tmp_path / 'dir'} , {three},")
    assert sorted(p.campaign_id for p in registry) == ["one", "three", "two"]


def test_registry_loads_the_repository_examples() -> None:
    assert PlanRegistry.load(str(ROOT / "examples")).get(STORE_PICKUP) is not None


def test_empty_spec_gives_an_empty_registry() -> None:
    assert len(PlanRegistry.load(None)) == 0
    assert len(PlanRegistry.load(" ")) == 0


def test_same_file_named_twice_is_loaded_once(tmp_path: Path) -> None:
    path = write(tmp_path / "api-trigger-plan.json", plan_data())
    assert len(PlanRegistry.load(f"{path},{tmp_path}")) == 1


def test_two_plans_for_one_campaign_is_a_plan_error_naming_both_files(tmp_path: Path) -> None:
    first = write(tmp_path / "a" / "api-trigger-plan.json", plan_data())
    second = write(tmp_path / "b" / "api-trigger-plan.json", plan_data())
    with pytest.raises(PlanError) as caught:
        PlanRegistry.load(str(tmp_path))
    message = str(caught.value)
    assert message.startswith("CLIX_PLANS: two trigger plans for campaign camp-1")
    assert str(first) in message
    assert str(second) in message


def test_invalid_plan_is_a_plan_error_naming_the_file_and_problem(tmp_path: Path) -> None:
    bad = shutil.copy(FIXTURES / "integer_type.json", tmp_path / "api-trigger-plan.json")
    with pytest.raises(PlanError) as caught:
        PlanRegistry.load(str(tmp_path))
    assert str(bad) in str(caught.value)
    assert "$.properties.item_count.type" in str(caught.value)
    assert caught.value.source == Path(bad)


def test_missing_path_and_folder_without_plans_are_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such file or folder"):
        PlanRegistry.load(str(tmp_path / "nope"))
    with pytest.raises(PlanError, match=r"no \*\.json files under"):
        PlanRegistry.load(str(tmp_path))


def test_discover_plan_files_is_sorted_and_looks_inside_dot_clix(tmp_path: Path) -> None:
    b = write(tmp_path / "b" / "api-trigger-plan.json", {})
    a = write(tmp_path / "a" / ".clix" / "api-trigger-plan.json", {})
    c = write(tmp_path / "a" / ".clix" / "welcome.json", {})
    write(tmp_path / "a" / ".git" / "config.json", {})
    assert discover_plan_files(tmp_path) == [a, c, b]


def test_registry_redact_uses_the_plan_of_the_trigger_campaign() -> None:
    registry = PlanRegistry([TriggerPlan.from_data(plan_data())])
    assert registry.redact(trigger())["properties"]["customer_name"] == REDACTED
    other = trigger(campaign_id="other")
    assert registry.redact(other)["properties"]["customer_name"] == "Dana Kim"


# --- checking triggers --------------------------------------------------------------------


def test_trigger_that_keeps_the_contract_passes() -> None:
    assert TriggerPlan.from_data(plan_data()).check(trigger(), strict=True) == ([], [])


def test_campaign_without_a_plan_is_not_checked() -> None:
    registry = PlanRegistry([TriggerPlan.from_data(plan_data())])
    assert registry.check(trigger(campaign_id="other", properties={"x": 1}), strict=True) == (
        [],
        [],
    )


def test_missing_required_key_is_an_error_naming_field_and_campaign() -> None:
    assert check(with_properties(order_id=...)) == [
        "properties.order_id: required by the plan for campaign camp-1 but missing"
    ]


def test_missing_optional_key_is_fine() -> None:
    assert check(with_properties(pickup_time=..., customer_name=...)) == []


@pytest.mark.parametrize(
    ("name", "value", "got"),
    [
        ("item_count", "3", "expected number, got string"),
        ("item_count", True, "expected number, got boolean (booleans are not numbers)"),
        ("item_count", None, "expected number, got null"),
        ("order_id", 12345, "expected string, got number"),
        ("gift", "yes", "expected boolean, got string"),
        ("pickup_time", "2:30 PM", "got a string that is not ISO-8601"),
        ("pickup_time", 1_700_000_000, "expected datetime (an ISO-8601 string), got number"),
    ],
)
def test_wrong_value_type_is_an_error_naming_the_field(name: str, value: Any, got: str) -> None:
    errors = check(with_properties(**{name: value}))
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"properties.{name}: ")
    assert got in errors[0]


@pytest.mark.parametrize(
    "value", ["2026-11-23T17:30:00Z", "2026-11-23T17:30:00+09:00", "2026-11-23", "2026-11-23 17:30"]
)
def test_iso_8601_datetimes_are_accepted(value: str) -> None:
    assert check(with_properties(pickup_time=value)) == []


def test_integers_and_floats_are_numbers() -> None:
    assert check(with_properties(item_count=2.5)) == []
    assert check(with_properties(item_count=10**30)) == []


def test_error_messages_never_echo_values() -> None:
    errors = check(with_properties(pickup_time="Dana's birthday", item_count="Dana Kim"))
    assert len(errors) == 2
    assert not any("Dana" in e for e in errors)


@pytest.mark.parametrize(
    ("value", "state"), [(..., "missing"), ("", "empty"), ("  ", "empty"), (None, "empty")]
)
def test_dynamic_filter_key_must_be_present_and_not_empty(value: Any, state: str) -> None:
    assert check(with_properties(store_location=value)) == [
        f"properties.store_location: {state}, but the plan for campaign camp-1 filters its "
        "audience on it (dynamic filter key)"
    ]


def test_dynamic_filter_key_is_required_even_when_the_spec_says_optional() -> None:
    data = plan_data()
    data["properties"]["store_location"]["required"] = False
    errors, _ = TriggerPlan.from_data(data).check(with_properties(store_location=...), strict=False)
    assert errors
    assert errors[0].startswith("properties.store_location: missing")


def test_unknown_key_is_a_warning_by_default_and_an_error_when_strict() -> None:
    kwargs = with_properties(storeLocation="San Francisco")
    parsed = TriggerPlan.from_data(plan_data())
    message = (
        "properties.storeLocation: not declared in the plan for campaign camp-1; "
        "did you mean 'store_location'?"
    )
    assert parsed.check(kwargs, strict=False) == ([], [message])
    assert parsed.check(kwargs, strict=True) == ([message], [])


def test_properties_that_are_not_an_object_are_an_error() -> None:
    assert check(trigger(properties=["a"])) == ["properties: expected an object, got array"]


@pytest.mark.parametrize(
    ("audience", "field"),
    [
        (None, "audience.broadcast"),
        ({"broadcast": False}, "audience.broadcast"),
        ({"broadcast": True, "targets": [{"device_id": "d"}]}, "audience.targets"),
        ({"targets": [{"device_id": "d"}]}, "audience.broadcast"),
    ],
)
def test_broadcast_plan_needs_broadcast_true_and_no_targets(
    audience: dict[str, Any] | None, field: str
) -> None:
    kwargs = trigger(audience=audience) if audience is not None else trigger()
    if audience is None:
        del kwargs["audience"]
    errors = check(kwargs)
    assert errors[0].startswith(f"{field}: the plan for campaign camp-1 is broadcast")


@pytest.mark.parametrize(
    ("audience", "field"),
    [
        (None, "audience.targets"),
        ({"targets": []}, "audience.targets"),
        ({"broadcast": True}, "audience.broadcast"),
    ],
)
def test_targets_plan_needs_targets_and_no_broadcast(
    audience: dict[str, Any] | None, field: str
) -> None:
    targets_mode = {"mode": "targets", "targets": [{"project_user_id": "u1"}]}
    errors = check(trigger(audience=audience), audience=targets_mode)
    assert errors[0].startswith(f"{field}: the plan for campaign camp-1 sends to targets")
    ok = trigger(audience={"targets": [{"device_id": "d9"}]})
    assert check(ok, audience=targets_mode) == []


@pytest.mark.parametrize(
    "audience", [{"broadcast": True}, {"targets": [{"project_user_id": "u1"}]}]
)
def test_default_plan_refuses_any_audience(audience: dict[str, Any]) -> None:
    errors = check(trigger(audience=audience), audience={"mode": "default"})
    assert errors == [
        "audience: the plan for campaign camp-1 uses the campaign's default audience; send none"
    ]
    kwargs = trigger()
    del kwargs["audience"]
    assert check(kwargs, audience={"mode": "default"}) == []
