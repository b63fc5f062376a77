"""`clix-worker plan` and its starter plans (worker/cli/plan.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tasks.plan_file import validate_plan_file
from tasks.plan_rules import validate_plan_data
from tests.unit.plan_samples import (
    FIXTURES,
    SAMPLE_DIR,
    SAMPLE_PLAN,
    STORE_PICKUP,
    plan_data,
    trigger,
    write,
)
from worker.cli.plan import RET_FAILED, RET_OK, RET_USAGE, plan, starter_plan

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
    assert "no *.json files under" in result.output


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
