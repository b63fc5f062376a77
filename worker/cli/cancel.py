"""``clix-worker cancel``: cancel a scheduled or queued trigger that is not yet sent."""

from __future__ import annotations

import sys

import click

from worker.cli.console import RET_FAILED, RET_OK, emit, load_settings

__all__ = ["cancel"]


@click.command()
@click.argument("campaign_id")
@click.argument("idempotency_key")
@click.option("--project", help="Project id (default CLIX_PROJECT_ID; else the fleet's).")
@click.option("--json", "as_json", is_flag=True)
def cancel(campaign_id: str, idempotency_key: str, project: str | None, as_json: bool) -> None:
    """Cancel a trigger that is scheduled or queued and not yet sent.

    Exit 0 when it will not be sent; 1 when it is in flight, done,
    dead-lettered or unknown (the message says which).
    """
    from config.keys import KeySpace
    from tasks import context
    from tasks.cancel import Canceller

    settings = load_settings()
    canceller = Canceller(
        context.redis_client(settings),
        KeySpace.of(settings),
        ttl_s=settings.clix_idempotency_ttl_s,
    )
    project = project or settings.clix_project_id
    outcome = canceller.cancel(campaign_id, idempotency_key, [project] if project else [])
    data = {
        "campaign_id": campaign_id,
        "idempotency_key": idempotency_key,
        "cancelled": outcome.cancelled,
        "outcome": outcome.outcome,
        "was": outcome.was,
    }
    emit(data, as_json, f"{campaign_id}/{idempotency_key}: {outcome.message}")
    sys.exit(RET_OK if outcome.cancelled else RET_FAILED)
