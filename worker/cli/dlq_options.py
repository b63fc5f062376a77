"""How the ``dlq`` verbs choose entries: ids, ``--all`` or filters; dry runs; interruptions.

The filters are ``--reason`` and ``--campaign`` (repeatable), ``--since`` and
``--until`` (:mod:`worker.cli.time_filter`); they become a
:class:`tasks.dlq_selection.Selection`. ``replay`` and ``purge`` take entry
ids, ``--all`` or filters (``--all`` with filters is the same as the filters).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from tasks.dlq import REASONS, DeadLetterQueue
from tasks.dlq_selection import Selection
from worker.cli.bulk import BulkRun
from worker.cli.console import RET_FAILED, RET_OK, RET_USAGE, emit, fail
from worker.cli.time_filter import TimeFilter

__all__ = [
    "DRY_RUN_OPTION",
    "JSON_OPTION",
    "describe",
    "filters",
    "print_dry_run",
    "selection_of",
    "stopped",
    "targets",
]

_TIME_HELP = "an age (30m, 2h, 7d) or an ISO-8601 time; UTC when no zone is given"

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
DRY_RUN_OPTION = click.option(
    "--dry-run", is_flag=True, help="Print what would be touched and the count; change nothing."
)


def filters(command: Callable[..., Any]) -> Callable[..., Any]:
    """The selection options shared by list, replay, purge and stats."""
    options = [
        click.option(
            "--reason",
            "reasons",
            multiple=True,
            type=click.Choice(REASONS),
            help="Only entries dead-lettered for this reason (repeatable).",
        ),
        click.option(
            "--campaign",
            "campaigns",
            multiple=True,
            metavar="ID",
            help="Only entries of this campaign (repeatable).",
        ),
        click.option(
            "--since",
            type=TimeFilter(),
            help=f"Only entries that failed at or after TIME: {_TIME_HELP}.",
        ),
        click.option(
            "--until",
            type=TimeFilter(),
            help=f"Only entries that failed at or before TIME: {_TIME_HELP}.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def selection_of(
    reasons: tuple[str, ...], campaigns: tuple[str, ...], since: int | None, until: int | None
) -> Selection:
    if since is not None and until is not None and since > until:
        fail("--since is later than --until: nothing could match", RET_USAGE)
    return Selection(frozenset(reasons), frozenset(campaigns), since, until)


def describe(entry: dict[str, Any]) -> str:
    status_code = entry.get("status_code")
    return (
        f"{entry['id']}  {entry['reason']:<17} {entry.get('campaign_id') or '-'}  "
        f"{entry.get('idempotency_key') or '-'}  status={status_code if status_code else '-'}  "
        f"attempts={entry.get('attempts')}  {entry.get('failed_at')}\n    {entry.get('error')}"
    )


def targets(
    queue: DeadLetterQueue, ids: tuple[str, ...], select_all: bool, selection: Selection
) -> tuple[list[str], list[str]]:
    """The entry ids to touch, oldest first, and the named ids not in the DLQ."""
    if ids and (select_all or not selection.is_empty):
        fail("name entry ids, or choose entries with --all or filters, not both", RET_USAGE)
    if ids:
        present = queue.present(ids)
        return (
            [i for i, ok in zip(ids, present, strict=True) if ok],
            [i for i, ok in zip(ids, present, strict=True) if not ok],
        )
    if not select_all and selection.is_empty:
        fail(
            "name entry ids, --all, or a filter (--reason, --campaign, --since, --until)", RET_USAGE
        )
    return queue.ids(selection), []


def print_dry_run(
    queue: DeadLetterQueue, verb: str, chosen: list[str], missing: list[str], as_json: bool
) -> None:
    """Print what ``verb`` would touch and the count, then exit as the real run would."""
    entries = [e for e in queue.get_many(chosen) if e is not None]
    lines = [describe(e) for e in entries]
    # undecodable messages are counted, but a replay would refuse them
    refused = [e["id"] for e in entries if verb == "replay" and not isinstance(e["trigger"], dict)]
    lines.append(f"would {verb} {len(chosen)} entr{'y' if len(chosen) == 1 else 'ies'}")
    if refused:
        lines.append(f"cannot be replayed (undecodable): {', '.join(refused)}")
    if missing:
        lines.append(f"not in the DLQ: {', '.join(missing)}")
    data = {"dry_run": True, "count": len(chosen), "ids": chosen, "missing": missing}
    if verb == "replay":
        data["refused"] = refused
    emit(data, as_json, "\n".join(lines))
    sys.exit(RET_FAILED if missing or refused else RET_OK)


def stopped(run: BulkRun, verb: str) -> None:
    if run.interrupted:
        click.echo(
            f"clix-worker: interrupted after {run.done} of {len(run.items)} entries; "
            f"nothing was {verb} twice or lost: run the same command again to continue",
            err=True,
        )
