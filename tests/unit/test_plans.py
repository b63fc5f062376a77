"""Trigger plans (tasks/plans.py) and `clix-worker plan` (worker/plan_commands.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from config.settings import ConfigurationError
from tasks.plans import (
    REDACTED,
    PlanError,
    PlanRegistry,
    Problem,
    TriggerPlan,
    discover_plan_files,
    pii_like_keys,
    redact,
    starter_plan,
    validate_plan_data,
    validate_plan_file,
)
from worker.plan_commands import RET_FAILED, RET_OK, RET_USAGE, plan

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


def check(kwargs: dict[str, Any], *, strict: bool = False, **changes: Any) -> list[str]:
    errors, _ = TriggerPlan.from_data(plan_data(**changes)).check(kwargs, strict=strict)
    return errors


# --- valid plans ------------------------------------------------------------------------


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


def test_design_section_2_example_is_valid() -> None:
    assert validate_plan_file(FIXTURES / "design_example.json") == []


def test_plan_without_audience_is_in_default_mode() -> None:
    data = plan_data()
    del data["audience"]
    assert TriggerPlan.from_data(data).audience_mode == "default"


def test_annotations_and_null_example_are_allowed() -> None:
    data = plan_data(description="why", **{"$schema": "x", "x-owner": "ops"})
    data["properties"]["order_id"].update(description="our order id", example=None)
    assert validate_plan_data(data) == []


def test_targets_plan_with_one_id_per_target_is_valid() -> None:
    data = plan_data(audience={"mode": "targets", "targets": [{"device_id": "d1"}]})
    assert TriggerPlan.from_data(data).targets == ({"device_id": "d1"},)


# --- each rule, one fixture -------------------------------------------------------------

RULES = [
    ("not_json.json", "$", "not valid JSON: Expecting ',' delimiter at line 4 column 3"),
    ("not_an_object.json", "$", "a trigger plan is a JSON object, got array"),
    ("missing_campaign_id.json", "$.campaign_id", "required"),
    ("empty_campaign_id.json", "$.campaign_id", "must not be empty"),
    ("campaign_id_not_a_path_segment.json", "$.campaign_id", "URL path segment; it contains '/'"),
    ("unknown_audience_mode.json", "$.audience.mode", 'got "everyone"'),
    ("targets_mode_without_targets.json", "$.audience.targets", "non-empty array of targets"),
    ("target_with_both_ids.json", "$.audience.targets[1]", "names both project_user_id and"),
    ("target_with_neither_id.json", "$.audience.targets[0]", "names neither"),
    ("targets_in_broadcast_mode.json", "$.audience.targets", "only used in mode targets"),
    ("four_dynamic_filter_keys.json", "$.dynamic_filter_keys", "lists 4 keys; Clix filters"),
    ("camel_case_dynamic_filter_key.json", "$.dynamic_filter_keys[0]", "snake_case"),
    ("undeclared_dynamic_filter_key.json", "$.dynamic_filter_keys[0]", "not declared under"),
    ("missing_properties.json", "$.properties", "non-empty object"),
    ("empty_properties.json", "$.properties", "non-empty object"),
    ("camel_case_key.json", "$.properties.itemCount", "did you mean 'item_count'?"),
    ("missing_type.json", "$.properties.order_id.type", "; missing"),
    ("integer_type.json", "$.properties.item_count.type", "got \"integer\" (use 'number')"),
    ("required_not_boolean.json", "$.properties.order_id.required", "true or false"),
    ("pii_not_boolean.json", "$.properties.customer_name.pii", "true or false"),
    ("boolean_example_for_number.json", "$.properties.item_count.example", "booleans are not"),
    ("string_example_for_number.json", "$.properties.item_count.example", "got string"),
    ("unparsable_datetime_example.json", "$.properties.pickup_time.example", "not ISO-8601"),
    ("object_example.json", "$.properties.store.example", "must be a primitive"),
    ("unknown_spec_key.json", "$.properties.order_id.reqired", "did you mean 'required'?"),
    ("unknown_top_level_key.json", "$.dynamic_filters", "did you mean 'dynamic_filter_keys'?"),
    ("duplicate_property.json", "$.properties.order_id", "given twice"),
]


@pytest.mark.parametrize(("fixture", "path", "message"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_fixture_fails_with_its_own_message_at_its_own_path(
    fixture: str, path: str, message: str
) -> None:
    problems = validate_plan_file(FIXTURES / fixture)
    assert len(problems) == 1, problems
    assert problems[0].path == path
    assert message in problems[0].message


def test_every_invalid_fixture_is_covered_by_a_rule() -> None:
    covered = {r[0] for r in RULES} | {"design_example.json", "several_errors.json"}
    assert {f.name for f in FIXTURES.glob("*.json")} == covered


def test_several_errors_in_one_file_are_all_reported() -> None:
    paths = [p.path for p in validate_plan_file(FIXTURES / "several_errors.json")]
    for expected in (
        "$.campaign_id",
        "$.audience.targets[0]",
        "$.dynamic_filter_keys",
        "$.properties.itemCount",
        "$.properties.itemCount.type",
        "$.properties.pickup_time.example",
    ):
        assert expected in paths


def test_problem_prints_as_path_colon_message() -> None:
    assert str(Problem("$.audience.targets[1]", "bad")) == "$.audience.targets[1]: bad"


def test_key_that_is_no_identifier_gets_a_bracketed_path() -> None:
    data = plan_data()
    data["properties"]["store location"] = {"type": "string"}
    assert [p.path for p in validate_plan_data(data)] == ['$.properties["store location"]']


def test_nan_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "nan.json"
    path.write_text('{"campaign_id": "c", "properties": {"n": {"type": "number", "example": NaN}}}')
    assert [str(p) for p in validate_plan_file(path)] == [
        "$: not valid JSON: NaN is not a JSON number"
    ]


def test_unreadable_plan_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        validate_plan_file(tmp_path / "missing.json")


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
    write(tmp_path / "c" / "other.json", plan_data(campaign_id="c"))  # not a plan name
    write(tmp_path / ".hidden" / "api-trigger-plan.json", plan_data(campaign_id="h"))
    write(tmp_path / "node_modules" / "api-trigger-plan.json", plan_data(campaign_id="n"))
    registry = PlanRegistry.load(str(tmp_path))
    assert len(registry) == 2
    assert registry.get("a") is not None
    assert registry.get("b") is not None
    assert registry.get("c") is None


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
    with pytest.raises(PlanError, match=r"no \*api-trigger-plan\.json files under"):
        PlanRegistry.load(str(tmp_path))


def test_discover_plan_files_is_sorted_and_looks_inside_dot_clix(tmp_path: Path) -> None:
    b = write(tmp_path / "b" / "api-trigger-plan.json", {})
    a = write(tmp_path / "a" / ".clix" / "api-trigger-plan.json", {})
    write(tmp_path / "a" / ".clix" / "config.json", {})
    assert discover_plan_files(tmp_path) == [a, b]


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


# --- PII ----------------------------------------------------------------------------------


def test_redact_replaces_pii_values_and_leaves_the_rest() -> None:
    kwargs = trigger()
    shown = redact(kwargs, TriggerPlan.from_data(plan_data()))
    assert shown["properties"]["customer_name"] == REDACTED
    assert shown["properties"]["store_location"] == "San Francisco"
    assert shown["campaign_id"] == "camp-1"
    assert kwargs["properties"]["customer_name"] == "Dana Kim"  # the original is untouched


def test_redact_without_a_plan_returns_an_unchanged_copy() -> None:
    kwargs = trigger()
    shown = redact(kwargs, None)
    assert shown == kwargs
    assert shown is not kwargs
    assert shown["properties"] is not kwargs["properties"]


def test_registry_redact_uses_the_plan_of_the_trigger_campaign() -> None:
    registry = PlanRegistry([TriggerPlan.from_data(plan_data())])
    assert registry.redact(trigger())["properties"]["customer_name"] == REDACTED
    other = trigger(campaign_id="other")
    assert registry.redact(other)["properties"]["customer_name"] == "Dana Kim"


def test_redact_survives_a_trigger_without_properties() -> None:
    kwargs = {"campaign_id": "camp-1", "idempotency_key": "k"}
    assert redact(kwargs, TriggerPlan.from_data(plan_data())) == kwargs


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


# --- starter plans ------------------------------------------------------------------------


def test_starter_plan_from_a_sample_trigger_validates_and_infers_types() -> None:
    data = starter_plan(STORE_PICKUP, trigger=trigger(campaign_id=STORE_PICKUP))
    assert validate_plan_data(data) == []
    props = data["properties"]
    assert data["audience"] == {"mode": "broadcast"}
    assert props["item_count"] == {"type": "number", "required": True, "example": 3}
    assert props["pickup_time"]["type"] == "datetime"
    assert props["store_location"]["type"] == "string"
    assert props["customer_name"] == {"type": "string", "required": True, "pii": True}
    assert all(spec["required"] for spec in props.values())


def test_starter_plan_infers_booleans_and_keeps_digit_strings_strings() -> None:
    data = starter_plan("c", trigger={"properties": {"gift": True, "order_id": "20261123"}})
    assert data["properties"]["gift"]["type"] == "boolean"
    assert data["properties"]["order_id"]["type"] == "string"
    assert data["audience"] == {"mode": "default"}


def test_starter_plan_takes_targets_mode_and_targets_from_the_sample() -> None:
    sample = {"audience": {"targets": [{"device_id": "d9"}]}, "properties": {"order_id": "1"}}
    data = starter_plan("c", trigger=sample)
    assert data["audience"] == {"mode": "targets", "targets": [{"device_id": "d9"}]}


def test_starter_plan_from_flags() -> None:
    data = starter_plan(
        "c",
        properties=["order_id", "item_count:number", "email"],
        audience_mode="targets",
        dynamic_filter_keys=["order_id"],
    )
    assert validate_plan_data(data) == []
    assert data["properties"]["item_count"] == {"type": "number", "required": True}
    assert data["properties"]["email"]["pii"] is True
    assert data["audience"]["targets"]  # a placeholder to edit keeps the plan valid
    assert data["dynamic_filter_keys"] == ["order_id"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no properties"),
        ({"trigger": {"properties": {"storeLocation": "SF"}}}, "did you mean 'store_location'"),
        ({"trigger": {"properties": {"tags": ["a"]}}}, "array has no plan type"),
        ({"trigger": {"campaign_id": "other", "properties": {"a": 1}}}, "for campaign other"),
        ({"trigger": {"body": {}}}, "unknown keys body"),
        ({"properties": ["count:integer"]}, "(use 'number')"),
    ],
)
def test_starter_plan_refuses_what_cannot_make_a_valid_plan(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        starter_plan("c", **kwargs)


# --- CLI ----------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(plan, list(args))


def test_cli_validate_valid_plan_prints_ok_and_exits_0() -> None:
    result = invoke("validate", str(SAMPLE_PLAN))
    assert result.exit_code == RET_OK, result.output
    assert result.output == f"{SAMPLE_PLAN}: OK\n"


def test_cli_validate_folder_uses_registry_discovery() -> None:
    result = invoke("validate", str(SAMPLE_DIR))
    assert result.exit_code == RET_OK, result.output
    assert str(SAMPLE_PLAN) in result.output


def test_cli_validate_invalid_plan_lists_every_problem_and_exits_1() -> None:
    path = FIXTURES / "several_errors.json"
    result = invoke("validate", str(path))
    assert result.exit_code == RET_FAILED
    lines = result.output.splitlines()
    assert len(lines) == len(validate_plan_file(path))
    assert f"{path}: $.campaign_id: must not be empty" in lines


def test_cli_validate_json_output_shape() -> None:
    bad = FIXTURES / "integer_type.json"
    result = invoke("validate", "--json", str(SAMPLE_PLAN), str(bad))
    assert result.exit_code == RET_FAILED
    report = json.loads(result.output)
    assert report[0] == {"path": str(SAMPLE_PLAN), "valid": True, "problems": []}
    assert report[1]["path"] == str(bad)
    assert report[1]["valid"] is False
    assert report[1]["problems"][0]["path"] == "$.properties.item_count.type"
    assert set(report[1]["problems"][0]) == {"path", "message"}


def test_cli_validate_missing_path_exits_2_after_checking_the_rest(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path / "nope.json"), str(SAMPLE_PLAN))
    assert result.exit_code == RET_USAGE
    assert "no such file or folder" in result.output
    assert f"{SAMPLE_PLAN}: OK" in result.output


def test_cli_validate_folder_without_plans_exits_2(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == RET_USAGE
    assert "no *api-trigger-plan.json files under" in result.output


def test_cli_validate_without_paths_is_bad_usage() -> None:
    assert invoke("validate").exit_code == RET_USAGE


def test_cli_validate_reports_two_plans_for_one_campaign(tmp_path: Path) -> None:
    write(tmp_path / "a" / "api-trigger-plan.json", plan_data())
    write(tmp_path / "b" / "api-trigger-plan.json", plan_data())
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == RET_FAILED
    assert result.output.count("campaign camp-1 also has a plan in") == 2


def test_cli_init_writes_a_valid_plan_from_a_sample_trigger(tmp_path: Path) -> None:
    sample = write(tmp_path / "trigger.json", trigger(campaign_id=STORE_PICKUP))
    output = tmp_path / "out" / ".clix" / "api-trigger-plan.json"
    result = invoke(
        "init",
        "--campaign",
        STORE_PICKUP,
        "--from-trigger",
        str(sample),
        "--output",
        str(output),
        "--filter-key",
        "store_location",
    )
    assert result.exit_code == RET_OK, result.output
    assert result.stdout == f"{output}\n"
    assert validate_plan_file(output) == []
    written = json.loads(output.read_text())
    assert written["dynamic_filter_keys"] == ["store_location"]
    assert "example" not in written["properties"]["customer_name"]  # no PII in the file


def test_cli_init_defaults_to_dot_clix_and_refuses_to_overwrite_without_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    args = ["init", "--campaign", "c", "--property", "order_id"]
    assert runner.invoke(plan, args).exit_code == RET_OK
    written = Path(".clix/api-trigger-plan.json")
    assert json.loads(written.read_text())["properties"] == {
        "order_id": {"type": "string", "required": True}
    }
    again = runner.invoke(plan, [*args, "--property", "item_count:number"])
    assert again.exit_code == RET_FAILED
    assert "exists; use --force" in again.output
    forced = runner.invoke(plan, [*args, "--property", "item_count:number", "--force"])
    assert forced.exit_code == RET_OK
    assert "item_count" in json.loads(written.read_text())["properties"]


def test_cli_init_with_an_unusable_sample_is_bad_usage(tmp_path: Path) -> None:
    out = str(tmp_path / "p.json")
    missing = invoke("init", "--campaign", "c", "--from-trigger", str(tmp_path / "x"), "-o", out)
    assert missing.exit_code == RET_USAGE
    (tmp_path / "bad.json").write_text("{not json")
    bad = invoke("init", "--campaign", "c", "--from-trigger", str(tmp_path / "bad.json"), "-o", out)
    assert bad.exit_code == RET_USAGE
    assert invoke("init", "--campaign", "c", "-o", out).exit_code == RET_USAGE  # no properties
    assert not Path(out).exists()
