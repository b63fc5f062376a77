"""``clix-worker dlq``: list, show, replay and purge dead-lettered triggers."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from config.settings import Settings
from worker.console import (
    RET_FAILED,
    RET_OK,
    RET_USAGE,
    dead_letter_queue,
    emit,
    fail,
    load_settings,
)

__all__ = ["dlq"]


@click.group()
def dlq() -> None:
    """List, inspect, replay and purge dead-lettered triggers."""


def _describe(entry: dict[str, Any]) -> str:
    status_code = entry.get("status_code")
    return (
        f"{entry['id']}  {entry['reason']:<17} {entry.get('campaign_id') or '-'}  "
        f"{entry.get('idempotency_key') or '-'}  status={status_code if status_code else '-'}  "
        f"attempts={entry.get('attempts')}  {entry.get('failed_at')}\n    {entry.get('error')}"
    )


def _for_display(entries: list[dict[str, Any]], settings: Settings, show_pii: bool) -> Any:
    """Entries with pii properties redacted (unless ``--show-pii``)."""
    from tasks.context import plan_registry
    from tasks.dlq_display import shown

    if show_pii:
        return entries
    registry = plan_registry(settings.clix_plans)
    out = []
    for entry in entries:
        plan = registry.get(str(entry.get("campaign_id")))
        out.append(shown(entry, plan.pii_keys if plan else ()))
    return out


_SHOW_PII = click.option(
    "--show-pii", is_flag=True, help="Show properties marked pii by the campaign's plan."
)


@dlq.command("list")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most N entries.")
@_SHOW_PII
@click.option("--json", "as_json", is_flag=True)
def dlq_list(limit: int | None, show_pii: bool, as_json: bool) -> None:
    """Entries, oldest first."""
    settings = load_settings()
    entries = _for_display(dead_letter_queue(settings).entries(limit), settings, show_pii)
    human = "\n".join(_describe(e) for e in entries) or "the dead-letter queue is empty"
    emit(entries, as_json, human)


@dlq.command("show")
@click.argument("entry_id")
@_SHOW_PII
@click.option("--json", "as_json", is_flag=True)
def dlq_show(entry_id: str, show_pii: bool, as_json: bool) -> None:
    """One entry in full (pii properties redacted unless --show-pii)."""
    settings = load_settings()
    entry = dead_letter_queue(settings).get(entry_id)
    if entry is None:
        fail(f"no DLQ entry with id {entry_id!r}")
    [entry] = _for_display([entry], settings, show_pii)
    emit(entry, as_json, json.dumps(entry, indent=2, ensure_ascii=False))


def _selected(queue: Any, ids: tuple[str, ...], select_all: bool) -> list[str]:
    if bool(ids) == select_all:
        fail("name entry ids or --all (one of the two)", RET_USAGE)
    return list(queue.ids()) if select_all else list(ids)


@dlq.command("replay")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "select_all", is_flag=True, help="Replay every entry.")
@click.option("--json", "as_json", is_flag=True)
def dlq_replay(entry_ids: tuple[str, ...], select_all: bool, as_json: bool) -> None:
    """Enqueue entries again (unchanged) and remove them from the DLQ."""
    from tasks.errors import InvalidTrigger, ReplayRefused
    from tasks.trigger import trigger_campaign

    queue = dead_letter_queue(load_settings())
    results: list[dict[str, Any]] = []
    failed = False
    for entry_id in _selected(queue, entry_ids, select_all):
        try:
            done = queue.replay(
                entry_id, lambda kwargs: str(trigger_campaign.apply_async(kwargs=kwargs).id)
            )
            results.append({"id": entry_id, "replayed": True, "task_id": done.task_id})
        except (ReplayRefused, InvalidTrigger) as exc:
            failed = True
            results.append({"id": entry_id, "replayed": False, "error": str(exc)})
    human = (
        "\n".join(
            f"{r['id']}: replayed as task {r['task_id']}"
            if r["replayed"]
            else f"{r['id']}: not replayed: {r['error']}"
            for r in results
        )
        or "nothing to replay"
    )
    emit(results, as_json, human)
    sys.exit(RET_FAILED if failed else RET_OK)


@dlq.command("purge")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "select_all", is_flag=True, help="Purge every entry.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
def dlq_purge(entry_ids: tuple[str, ...], select_all: bool, yes: bool, as_json: bool) -> None:
    """Delete entries for good."""
    queue = dead_letter_queue(load_settings())
    ids = _selected(queue, entry_ids, select_all)
    if (
        ids
        and not yes
        and not click.confirm(f"Delete {len(ids)} dead-lettered trigger(s) for good?", err=True)
    ):
        fail("nothing purged")
    removed = queue.purge(ids)
    missing = [i for i in ids if i not in removed]
    human = f"purged {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}" + (
        f"; not in the DLQ: {', '.join(missing)}" if missing else ""
    )
    emit({"purged": removed, "missing": missing}, as_json, human)
    sys.exit(RET_FAILED if missing else RET_OK)
