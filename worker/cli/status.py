"""``clix-worker status``: what happened to one trigger (by campaign and idempotency key)."""

from __future__ import annotations

import sys
from typing import Any

import click

from config.keys import Scope
from worker.cli.console import RET_FAILED, RET_OK, emit, idempotency_store, load_settings

__all__ = ["status"]


@click.command()
@click.argument("campaign_id")
@click.argument("idempotency_key")
@click.option("--project", help="Project id (default CLIX_PROJECT_ID; else any project).")
@click.option("--json", "as_json", is_flag=True)
def status(campaign_id: str, idempotency_key: str, project: str | None, as_json: bool) -> None:
    """Show what happened to a trigger: queued, in_flight, done or unknown."""
    from tasks.idempotency import Status

    settings = load_settings()
    store = idempotency_store(settings)
    project = project or settings.clix_project_id
    # without a project id, find it; a trigger still queued (pending) has no project yet
    projects = [project] if project else store.projects_for(campaign_id, idempotency_key) or [""]
    found = Status("unknown")
    for candidate in projects:
        found = store.status(Scope(candidate, campaign_id, idempotency_key))
        if found.state != "unknown" or found.dead_entry_id:
            break
    data: dict[str, Any] = {
        "campaign_id": campaign_id,
        "idempotency_key": idempotency_key,
        "state": found.state,
        "trigger_id": found.trigger_id,
    }
    human = f"{found.state}" + (f" trigger_id={found.trigger_id}" if found.trigger_id else "")
    if found.dead_entry_id:
        data["dead_letter_id"] = found.dead_entry_id
        human += f" (dead-lettered as {found.dead_entry_id}; see `clix-worker dlq show`)"
    emit(data, as_json, human)
    sys.exit(RET_FAILED if found.state == "unknown" else RET_OK)
