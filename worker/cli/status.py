"""``clix-worker status``: what happened to one trigger (by campaign and idempotency key)."""

from __future__ import annotations

import sys

import click

from config.keys import KeySpace, Scope, as_text
from worker.cli.console import RET_FAILED, RET_OK, emit, idempotency_store, load_settings

__all__ = ["status"]


def _human(data: dict[str, object], history: bool) -> str:
    line = str(data["state"])
    if data.get("trigger_id"):
        line += f" trigger_id={data['trigger_id']}"
    if data.get("send_at"):
        line += f" send_at={data['send_at']}"
    if data.get("dead_letter_id"):
        line += f" (dead-lettered as {data['dead_letter_id']}; see `clix-worker dlq show`)"
    if history:
        attempts = data.get("attempts") or []
        assert isinstance(attempts, list)
        line += f"\n{len(attempts)} attempt(s)" + ("" if attempts else " recorded")
        for number, attempt in enumerate(attempts, start=1):
            error = f" {attempt['error']}" if attempt["error"] else ""
            line += (
                f"\n  {number}. {attempt['at']}  {attempt['status']}{error}  "
                f"{attempt['latency_ms']} ms  {attempt['worker']}"
            )
    return line


@click.command()
@click.argument("campaign_id")
@click.argument("idempotency_key")
@click.option("--project", help="Project id (default CLIX_PROJECT_ID; else the fleet's).")
@click.option("--history", is_flag=True, help="List every attempt (the last 20).")
@click.option("--json", "as_json", is_flag=True)
def status(
    campaign_id: str, idempotency_key: str, project: str | None, history: bool, as_json: bool
) -> None:
    """Show what happened to a trigger, and with --history every attempt.

    States: scheduled, queued, in_flight, done, dead_lettered, cancelled,
    unknown. Exit 0 for a known trigger, 1 for an unknown one.
    """
    from tasks.lookup import TriggerState, look_up

    settings = load_settings()
    store = idempotency_store(settings)
    project = project or settings.clix_project_id
    if project:
        projects = [project]
    else:
        # the projects the fleet's workers registered, else the ones with ledger state
        fleet = store.redis.smembers(KeySpace.of(settings).projects)
        known = {as_text(p) for p in fleet} | set(store.projects_for(campaign_id, idempotency_key))
        projects = sorted(known) or [""]
    found = TriggerState("unknown")
    for candidate in projects:
        found = look_up(store, Scope(candidate, campaign_id, idempotency_key))
        if found.state not in ("unknown", "queued", "scheduled", "cancelled"):
            break  # the ledger of this project holds it
    data = found.to_json(campaign_id, idempotency_key, history=history)
    emit(data, as_json, _human(data, history))
    sys.exit(RET_FAILED if found.state == "unknown" else RET_OK)
