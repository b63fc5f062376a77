"""``clix-worker dlq``: list, show, count, replay and purge dead-lettered triggers.

``list``, ``replay``, ``purge`` and ``stats`` choose entries with ``--reason``,
``--campaign`` (both repeatable), ``--since`` and ``--until`` (an age such as
``2h`` or an ISO-8601 time); ``replay`` and ``purge`` also take entry ids or
``--all``, and ``--dry-run`` to print what would be touched. Bulk replay and
purge stop cleanly between two entries when interrupted (see
:mod:`worker.bulk`), and a re-run continues without replaying anything twice.

Exit codes: 0 success (also when a filter matches nothing); 1 an operation
failed, an explicit id is not in the DLQ, or the run was interrupted; 2 bad
usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from config.settings import Settings
from tasks.dlq import REASONS, DeadLetterQueue
from tasks.dlq_selection import Selection
from worker.bulk import BulkRun
from worker.console import (
    RET_FAILED,
    RET_OK,
    RET_USAGE,
    dead_letter_queue,
    emit,
    fail,
    load_settings,
)
from worker.time_filter import TimeFilter

__all__ = ["dlq"]

_TIME_HELP = "an age (30m, 2h, 7d) or an ISO-8601 time; UTC when no zone is given"


@click.group()
def dlq() -> None:
    """List, inspect, count, replay and purge dead-lettered triggers."""


def _filters(command: Callable[..., Any]) -> Callable[..., Any]:
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
            help=f"Only entries that failed at or after T: {_TIME_HELP}.",
        ),
        click.option(
            "--until",
            type=TimeFilter(),
            help=f"Only entries that failed at or before T: {_TIME_HELP}.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _selection(
    reasons: tuple[str, ...], campaigns: tuple[str, ...], since: int | None, until: int | None
) -> Selection:
    if since is not None and until is not None and since > until:
        fail("--since is later than --until: nothing could match", RET_USAGE)
    return Selection(frozenset(reasons), frozenset(campaigns), since, until)


def _describe(entry: dict[str, Any]) -> str:
    status_code = entry.get("status_code")
    return (
        f"{entry['id']}  {entry['reason']:<17} {entry.get('campaign_id') or '-'}  "
        f"{entry.get('idempotency_key') or '-'}  status={status_code if status_code else '-'}  "
        f"attempts={entry.get('attempts')}  {entry.get('failed_at')}\n    {entry.get('error')}"
    )


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
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_DRY_RUN = click.option(
    "--dry-run", is_flag=True, help="Print what would be touched and the count; change nothing."
)


@dlq.command("list")
@_filters
@click.option(
    "--limit", type=click.IntRange(min=1), help="Show at most N entries (only those are read)."
)
@click.option("--dry-run", is_flag=True, help="Accepted for symmetry: list never changes anything.")
@_SHOW_PII
@_JSON
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
    selection = _selection(reasons, campaigns, since, until)
    settings = load_settings()
    found = dead_letter_queue(settings).scan(selection, limit)
    entries = _for_display(found, settings, show_pii)
    empty = "the dead-letter queue is empty" if selection.is_empty else "no entry matches"
    emit(entries, as_json, "\n".join(_describe(e) for e in entries) or empty)


@dlq.command("show")
@click.argument("entry_id")
@_SHOW_PII
@_JSON
def dlq_show(entry_id: str, show_pii: bool, as_json: bool) -> None:
    """One entry in full (pii redacted unless --show-pii)."""
    settings = load_settings()
    entry = dead_letter_queue(settings).get(entry_id)
    if entry is None:
        fail(f"no DLQ entry with id {entry_id!r}")
    [entry] = _for_display([entry], settings, show_pii)
    emit(entry, as_json, json.dumps(entry, indent=2, ensure_ascii=False))


@dlq.command("stats")
@_filters
@_JSON
def dlq_stats(
    reasons: tuple[str, ...],
    campaigns: tuple[str, ...],
    since: int | None,
    until: int | None,
    as_json: bool,
) -> None:
    """Count entries by reason and by campaign."""
    selection = _selection(reasons, campaigns, since, until)
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


def _targets(
    queue: DeadLetterQueue, ids: tuple[str, ...], select_all: bool, selection: Selection
) -> tuple[list[str], list[str]]:
    """The entry ids to touch, oldest first, and the named ids not in the DLQ."""
    if ids and (select_all or not selection.is_empty):
        fail("name entry ids, or choose entries with --all or filters, not both", RET_USAGE)
    if ids:
        pipe = queue.redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.hexists(queue.keys.dlq_entries, entry_id)
        present = pipe.execute()
        return (
            [i for i, ok in zip(ids, present, strict=True) if ok],
            [i for i, ok in zip(ids, present, strict=True) if not ok],
        )
    if not select_all and selection.is_empty:
        fail(
            "name entry ids, --all, or a filter (--reason, --campaign, --since, --until)", RET_USAGE
        )
    return queue.ids(selection), []


def _dry_run(
    queue: DeadLetterQueue, verb: str, chosen: list[str], missing: list[str], as_json: bool
) -> None:
    """Print what ``verb`` would touch and the count, then exit as the real run would."""
    entries = [e for e in queue.get_many(chosen) if e is not None]
    lines = [_describe(e) for e in entries]
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


def _stopped(run: BulkRun, verb: str) -> None:
    if run.interrupted:
        click.echo(
            f"clix-worker: interrupted after {run.done} of {len(run.items)} entries; "
            f"nothing was {verb} twice or lost: run the same command again to continue",
            err=True,
        )


@dlq.command("replay")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "select_all", is_flag=True, help="Replay every entry (filters narrow it).")
@_filters
@_DRY_RUN
@_JSON
def dlq_replay(
    entry_ids: tuple[str, ...],
    select_all: bool,
    reasons: tuple[str, ...],
    campaigns: tuple[str, ...],
    since: int | None,
    until: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Enqueue entries again (unchanged) and remove them from the DLQ.

    A trigger already back in the pipeline (delivered, in flight or queued,
    e.g. by an interrupted replay) is not published again; its entry is
    removed. Undecodable messages are refused (exit 1).
    """
    from tasks.trigger import trigger_campaign

    selection = _selection(reasons, campaigns, since, until)
    queue = dead_letter_queue(load_settings())
    chosen, missing = _targets(queue, entry_ids, select_all, selection)
    if dry_run:
        _dry_run(queue, "replay", chosen, missing, as_json)
    results: list[dict[str, Any]] = [
        {"id": i, "replayed": False, "outcome": "missing", "error": "not in the DLQ"}
        for i in missing
    ]

    def publish(kwargs: dict[str, Any]) -> str:
        # validates again (the plan may have changed) and writes the pending record first
        return str(trigger_campaign.apply_async(kwargs=kwargs).id)

    run = BulkRun(chosen, "replaying")
    for entry_id in run:
        result, stop = _replay_one(queue, entry_id, publish)
        results.append(result)
        if stop:
            break
    human = "\n".join(_replay_line(r) for r in results) or "nothing matched: nothing replayed"
    emit(results, as_json, human)
    _stopped(run, "replayed")
    failed = run.interrupted or any(
        r["outcome"] in ("missing", "refused", "failed") for r in results
    )
    sys.exit(RET_FAILED if failed else RET_OK)


def _replay_one(
    queue: DeadLetterQueue, entry_id: str, publish: Callable[[dict[str, Any]], str]
) -> tuple[dict[str, Any], bool]:
    """Replay one entry: its result line, and whether the run must stop (infrastructure)."""
    from tasks.errors import InvalidTrigger, ReplayRefused

    try:
        done = queue.replay(entry_id, publish)
    except (ReplayRefused, InvalidTrigger) as exc:
        outcome = "missing" if "no DLQ entry" in str(exc) else "refused"
        return {"id": entry_id, "replayed": False, "outcome": outcome, "error": str(exc)}, False
    except Exception as exc:  # noqa: BLE001 - broker or Redis down: stop, say so, no traceback
        error = f"could not publish ({type(exc).__name__}: {exc}); the entry stays in the DLQ"
        return {"id": entry_id, "replayed": False, "outcome": "failed", "error": error}, True
    result: dict[str, Any] = {"id": entry_id, "replayed": done.outcome == "replayed"}
    result["outcome"] = done.outcome
    if done.task_id is not None:
        result["task_id"] = done.task_id
    if done.newer_entry_id is not None:
        result["newer_entry_id"] = done.newer_entry_id
    return result, False


_NOT_PUBLISHED = {
    "done": "already delivered; entry removed",
    "in_flight": "being delivered now; entry removed",
    "queued": "already queued again; entry removed",
}


def _replay_line(result: dict[str, Any]) -> str:
    outcome = result["outcome"]
    if outcome == "replayed":
        return f"{result['id']}: replayed as task {result['task_id']}"
    if outcome == "superseded":
        return (
            f"{result['id']}: dead-lettered again as {result['newer_entry_id']} "
            "(replay that one); entry removed"
        )
    if outcome in _NOT_PUBLISHED:
        return f"{result['id']}: {_NOT_PUBLISHED[outcome]}"
    return f"{result['id']}: not replayed: {result['error']}"


@dlq.command("purge")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "select_all", is_flag=True, help="Purge every entry (filters narrow it).")
@_filters
@_DRY_RUN
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_JSON
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
    """Delete entries for good (their keys may be sent again by a new message)."""
    selection = _selection(reasons, campaigns, since, until)
    queue = dead_letter_queue(load_settings())
    chosen, missing = _targets(queue, entry_ids, select_all, selection)
    if dry_run:
        _dry_run(queue, "purge", chosen, missing, as_json)
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
    _stopped(run, "purged")
    sys.exit(RET_FAILED if missing or run.interrupted else RET_OK)
