"""`--since` / `--until` values: ISO-8601 instants or ages like `2h` before now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner

from worker.cli.time_filter import TimeFilter, parse_instant

NOW = datetime(2026, 12, 1, 18, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("90s", timedelta(seconds=90)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        (" 2H ", timedelta(hours=2)),
        ("now", timedelta(0)),
    ],
)
def test_a_relative_time_is_that_long_before_now(text: str, ago: timedelta) -> None:
    assert parse_instant(text, NOW) == NOW - ago


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30T08:15:00Z", datetime(2026, 11, 30, 8, 15, tzinfo=UTC)),
        ("2026-11-30T10:15:00+02:00", datetime(2026, 11, 30, 8, 15, tzinfo=UTC)),
        ("2026-11-30T08:15:00.250+00:00", datetime(2026, 11, 30, 8, 15, 0, 250_000, tzinfo=UTC)),
        ("2026-11-30T08:15", datetime(2026, 11, 30, 8, 15, tzinfo=UTC)),  # no zone: UTC
        ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),
    ],
)
def test_an_iso_time_is_read_in_its_zone_or_utc(text: str, expected: datetime) -> None:
    assert parse_instant(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "2x", "h", "-2h", "yesterday", "2026-13-01", "1h 2", "0x10"])
def test_anything_else_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_instant(text, NOW)


def test_the_click_type_gives_epoch_ms_and_exits_2_on_a_bad_value() -> None:
    @click.command()
    @click.option("--since", type=TimeFilter(clock=lambda: NOW.timestamp()))
    def show(since: int | None) -> None:
        click.echo(str(since))

    runner = CliRunner()
    good = runner.invoke(show, ["--since", "1h"])
    assert good.exit_code == 0
    assert good.output.strip() == str(int((NOW - timedelta(hours=1)).timestamp() * 1000))
    bad = runner.invoke(show, ["--since", "soon"])
    assert bad.exit_code == 2
    assert "--since" in bad.output
    assert "ISO-8601" in bad.output
