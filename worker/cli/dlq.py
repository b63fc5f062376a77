"""``clix-worker dlq``: list, show, count, replay and purge dead-lettered triggers.

``list``, ``replay``, ``purge`` and ``stats`` choose entries with ``--reason``,
``--campaign`` (both repeatable), ``--since`` and ``--until`` (an age such as
``2h`` or an ISO-8601 time); ``replay`` and ``purge`` also take entry ids or
``--all``, and ``--dry-run`` to print what would be touched. Bulk replay and
purge stop cleanly between two entries when interrupted (see
:mod:`worker.cli.bulk`), and a re-run continues without replaying anything twice.

Exit codes: 0 success (also when a filter matches nothing); 1 an operation
failed, an explicit id is not in the DLQ, or the run was interrupted; 2 bad
usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

import click

from config.settings import Settings
from worker.cli.bulk import BulkRun
from worker.cli.console import (
    RET_FAILED,
    RET_OK,
    dead_letter_queue,
    emit,
    fail,
    load_settings,
)
from worker.cli.dlq_options import (
    DRY_RUN_OPTION,
    JSON_OPTION,
    describe,
    filters,
    print_dry_run,
    selection_of,
    stopped,
    targets,
)
from worker.cli.dlq_replay import dlq_replay

__all__ = ["dlq"]


@click.group()
def dlq() -> None:
    """List, inspect, count, replay and purge dead-lettered triggers."""


def _for_display(entries: Iterable[dict[str, Any]], settings: Settings, show_pii: bool) -> Any:
    """Entries with pii redacted in ``trigger`` and ``raw`` (unless ``--show-pii``)."""
    from tasks.context import plan_registry
    from tasks.dlq_display import shown

    if show_pii:
        return list(entries)
    registry = plan_registry(settings.clix_plans)
    out = []
    for entry in entries:
        plan = registry.get(str(entry.get("campaign_id")))
        out.append(shown(entry, plan.pii_keys if plan else ()))
    return out


_SHOW_PII = click.option(
    "--show-pii",
    is_flag=True,
    help="Show personal data: properties marked pii by the plan, and raw bodies as stored.",
)


@dlq.command("list")
@filters
@click.option(
    "--limit", type=click.IntRange(min=1), help="Show at most N entries (only those are read)."
)
@click.option("--dry-run", is_flag=True, help="Accepted for symmetry: list never changes anything.")
@_SHOW_PII
@JSON_OPTION
def dlq_list(
    reasons: tuple[str, ...],
    campaigns: tuple[str, ...],
    since: int | None,
    until: int | None,
    limit: int | None,
    dry_run: bool,
    show_pii: bool,
    as_json: bool,
) -> None:
    """Entries, oldest first (pii redacted unless --show-pii)."""
    selection = selection_of(reasons, campaigns, since, until)
    settings = load_settings()
    found = dead_letter_queue(settings).scan(selection, limit)
    entries = _for_display(found, settings, show_pii)
    empty = "the dead-letter queue is empty" if selection.is_empty else "no entry matches"
    emit(entries, as_json, "\n".join(describe(e) for e in entries) or empty)


@dlq.command("show")
@click.argument("entry_id")
@_SHOW_PII
@JSON_OPTION
def dlq_show(entry_id: str, show_pii: bool, as_json: bool) -> None:
    """One entry in full (pii redacted unless --show-pii)."""
    settings = load_settings()
    entry = dead_letter_queue(settings).get(entry_id)
    if entry is None:
        fail(f"no DLQ entry with id {entry_id!r}")
    [entry] = _for_display([entry], settings, show_pii)
    emit(entry, as_json, json.dumps(entry, indent=2, ensure_ascii=False))


@dlq.command("stats")
@filters
@JSON_OPTION
def dlq_stats(
    reasons: tuple[str, ...],
    campaigns: tuple[str, ...],
    since: int | None,
    until: int | None,
    as_json: bool,
) -> None:
    """Count entries by reason and by campaign."""
    selection = selection_of(reasons, campaigns, since, until)
    data = dead_letter_queue(load_settings()).stats(selection).to_json()
    lines = [f"entries  {data['total']}"]
    if data["total"]:
        lines[0] += f"  (failed {data['oldest_failed_at']} .. {data['newest_failed_at']})"
        lines.append("by reason")
        lines += [f"  {reason:<18} {n}" for reason, n in data["by_reason"].items()]
        lines.append("by campaign")
        lines += [
            f"  {c['campaign_id'] or '(unknown)':<18} {c['count']}" for c in data["by_campaign"]
        ]
    emit(data, as_json, "\n".join(lines))


@dlq.command("purge")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "select_all", is_flag=True, help="Purge every entry (filters narrow it).")
@filters
@DRY_RUN_OPTION
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@JSON_OPTION
def dlq_purge(
    entry_ids: tuple[str, ...],
    select_all: bool,
    reasons: tuple[str, ...],
    campaigns: tuple[str, ...],
    since: int | None,
    until: int | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete entries for good (their keys may be sent again by a new message).

    Choose entries by id, with --all, or with filters; asks first unless
    --yes. Bulk runs show progress on a terminal; Ctrl-C stops between two
    entries, and the same command continues.
    """
    selection = selection_of(reasons, campaigns, since, until)
    queue = dead_letter_queue(load_settings())
    chosen, missing = targets(queue, entry_ids, select_all, selection)
    if dry_run:
        print_dry_run(queue, "purge", chosen, missing, as_json)
    if (
        chosen
        and not yes
        and not click.confirm(f"Delete {len(chosen)} dead-lettered trigger(s) for good?", err=True)
    ):
        fail("nothing purged")
    removed: list[str] = []
    run = BulkRun(chosen, "purging")
    for entry_id in run:
        removed += queue.purge([entry_id])
    # an id listed a moment ago may have been replayed or purged by someone else since
    missing += [i for i in chosen[: run.done] if i not in set(removed)]
    human = f"purged {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}" + (
        f"; not in the DLQ: {', '.join(missing)}" if missing else ""
    )
    emit({"purged": removed, "missing": missing}, as_json, human)
    stopped(run, "purged")
    sys.exit(RET_FAILED if missing or run.interrupted else RET_OK)


dlq.add_command(dlq_replay)
