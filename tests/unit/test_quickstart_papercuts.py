"""What a new user meets first: `enqueue`'s refusals and what `up` says (no processes)."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from worker.cli.console import RET_USAGE
from worker.cli.enqueue import enqueue
from worker.quickstart import cli_command, redis_line


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(enqueue, list(args))
    return result.exit_code, result.output


def test_an_empty_campaign_id_is_named_as_such() -> None:
    code, output = run("", "k6")
    assert code == RET_USAGE
    assert "the campaign id is empty" in output


def test_a_property_name_with_a_space_is_refused_with_a_snake_case_hint() -> None:
    code, output = run("camp", "k6", "-p", "Order Id=5")
    assert code == RET_USAGE
    assert "'Order Id' has a space" in output
    assert "'order_id'" in output


def test_a_property_given_twice_is_refused() -> None:
    code, output = run("camp", "k6", "-p", "a=1", "-p", "a=2")
    assert code == RET_USAGE
    assert "'a' given twice" in output


def test_at_and_in_together_are_bad_usage() -> None:
    code, output = run("camp", "k6", "--at", "2030-01-01T00:00:00Z", "--in", "2h")
    assert code == RET_USAGE
    assert "--at or --in, not both" in output


def test_a_bad_duration_is_bad_usage() -> None:
    code, output = run("camp", "k6", "--in", "soon")
    assert code == RET_USAGE
    assert "not a duration" in output


def test_up_says_the_configured_redis_did_not_answer_and_which_one_it_uses() -> None:
    line = redis_line("redis://db:6379/0", configured=True, answered=False, used="redis://x:1/0")
    assert "redis://db:6379/0 (REDIS_URL) did not answer; using redis://x:1/0" in line


def test_up_does_not_credit_an_unset_redis_url() -> None:
    line = redis_line("redis://localhost:6379/0", configured=False, answered=True)
    assert "(default REDIS_URL, already running)" in line
    assert "(REDIS_URL," not in line


def test_the_hints_name_a_command_that_runs_without_an_active_virtualenv() -> None:
    command = cli_command()
    first = Path(command.split()[0])
    assert first.is_absolute()
    assert first.exists()
    assert command.endswith("clix-worker") or command == f"{sys.executable} -m worker"
