"""``clix-worker dlq replay``: enqueue dead-lettered triggers again, unchanged.

Each entry goes through :meth:`tasks.dlq.DeadLetterQueue.replay` (publish,
then remove; nothing lost or doubled). A refused entry (undecodable, still
invalid, gone) is reported and the run goes on; a publish that fails (broker
down) stops the run: the entry keeps its dead mark and the same command can
be run again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from tasks.dlq import DeadLetterQueue
from worker.cli.bulk import BulkRun
from worker.cli.console import RET_FAILED, RET_OK, dead_letter_queue, emit, load_settings
from worker.cli.dlq_options import (
    DRY_RUN_OPTION,
    JSON_OPTION,
    filters,
    print_dry_run,
    selection_of,
    stopped,
    targets,
)

__all__ = ["dlq_replay"]


@click.command("replay")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "select_all", is_flag=True, help="Replay every entry (filters narrow it).")
@filters
@DRY_RUN_OPTION
@JSON_OPTION
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

    Choose entries by id, with --all, or with filters. A trigger already back
    in the pipeline (delivered, in flight or queued, e.g. by an interrupted
    replay) is not published again; its entry is removed. Undecodable
    messages are refused (exit 1). Bulk runs show progress on a terminal;
    Ctrl-C stops between two entries, and the same command continues.
    """
    from tasks.trigger import trigger_campaign

    selection = selection_of(reasons, campaigns, since, until)
    queue = dead_letter_queue(load_settings())
    chosen, missing = targets(queue, entry_ids, select_all, selection)
    if dry_run:
        print_dry_run(queue, "replay", chosen, missing, as_json)
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
    stopped(run, "replayed")
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
