"""``clix-worker health``: breaker, rate limit, DLQ depth (``check`` is :mod:`worker.cli.check`)."""

from __future__ import annotations

import sys

import click

from config.keys import KeySpace
from worker.cli.console import (
    RET_FAILED,
    RET_OK,
    RET_USAGE,
    dead_letter_queue,
    emit,
    fail,
    load_settings,
)

__all__ = ["health"]


@click.command()
@click.option("--project", help="Project id (default CLIX_PROJECT_ID; else the fleet's one).")
@click.option("--json", "as_json", is_flag=True)
def health(project: str | None, as_json: bool) -> None:
    """Circuit breaker, rate limit and DLQ depth; exit 1 while the breaker is open."""
    from config.keys import as_text
    from tasks.context import circuit_breaker, redis_client

    settings = load_settings()
    conn = redis_client(settings)
    project = project or settings.clix_project_id
    if not project:
        # the project the fleet's workers registered at start-up, when there is one
        fleet = sorted(as_text(p) for p in conn.smembers(KeySpace.of(settings).projects))
        if len(fleet) != 1:
            known = f" (the fleet sends for {', '.join(fleet)})" if fleet else ""
            fail(f"give --project or set CLIX_PROJECT_ID{known}", RET_USAGE)
        project = fleet[0]
    state = circuit_breaker(settings, conn, project).state()
    stats = conn.hgetall(KeySpace.of(settings).stats)
    data = {
        "project_id": project,
        "breaker": state.state,
        "breaker_reason": state.reason,
        "next_probe_in_s": None if state.state == "closed" else state.probe_in_s,
        "rate_limit_per_s": settings.clix_rate_limit_per_s,
        "rate_limit_burst": settings.rate_limit_burst,
        "dlq_depth": dead_letter_queue(settings).depth(),
        "ambiguous_duplicates": int(stats.get(b"ambiguous_duplicates", 0)),
        "reconciled": int(stats.get(b"reconciled", 0)),
    }
    human = "\n".join(f"{k:<22} {v}" for k, v in data.items() if v is not None)
    if state.reason == "auth":
        human += "\nClix refuses the credentials: fix CLIX_API_KEY / CLIX_PROJECT_ID"
    emit(data, as_json, human)
    sys.exit(RET_FAILED if state.state != "closed" else RET_OK)
