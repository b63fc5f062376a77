"""The plan file format and its validation (tasks/plan_rules.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.plan_file import validate_plan_file
from tasks.plan_rules import Problem, validate_plan_data
from tests.unit.plan_samples import FIXTURES, plan_data

# --- valid plans --------------------------------------------------------------------------


def test_design_section_2_example_is_valid() -> None:
    assert validate_plan_file(FIXTURES / "design_example.json") == []


def test_annotations_and_null_example_are_allowed() -> None:
    data = plan_data(description="why", **{"$schema": "x", "x-owner": "ops"})
    data["properties"]["order_id"].update(description="our order id", example=None)
    assert validate_plan_data(data) == []


# --- each rule, one fixture ---------------------------------------------------------------

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
