"""``clix-worker check`` (ready to run?) and ``health`` (breaker, rate limit, DLQ depth)."""

from __future__ import annotations

import sys

import click

from config.keys import KeySpace
from config.settings import ConfigurationError, get_settings
from worker.cli.console import (
    RET_FAILED,
    RET_OK,
    RET_USAGE,
    dead_letter_queue,
    emit,
    fail,
    load_settings,
)

__all__ = ["check", "health"]


@click.command()
@click.option(
    "--worker/--no-worker",
    "for_worker",
    default=True,
    show_default=True,
    help="Also require what a sending worker needs (credentials, plans).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=5.0,
    show_default=True,
    help="Seconds to wait for Redis and the broker.",
)
@click.option("--json", "as_json", is_flag=True)
def check(for_worker: bool, timeout_s: float, as_json: bool) -> None:
    """Readiness: settings valid, Redis and the broker answer; exit 0 only if all pass."""
    import redis as redis_lib

    from config.celery_app import app
    from config.connections import store_client

    results: dict[str, str] = {}
    try:
        settings = get_settings()
        results["settings"] = "ok"
    except ConfigurationError as exc:
        emit({"settings": str(exc)}, as_json, f"settings  FAILED: {exc}")
        sys.exit(RET_FAILED)
    if for_worker:
        try:
            from tasks.context import plan_registry

            settings.require_credentials()
            plan_registry(settings.clix_plans)
            results["credentials"] = "ok"
        except ConfigurationError as exc:
            results["credentials"] = f"FAILED: {exc}"
    try:
        conn = store_client(settings, timeout_s=timeout_s, connect_timeout_s=timeout_s, retry=False)
        conn.ping()
        results["redis"] = "ok"
    except (redis_lib.RedisError, OSError) as exc:
        results["redis"] = f"FAILED: {type(exc).__name__}: {exc}"
    try:
        with app.connection_for_write() as conn_w:
            conn_w.ensure_connection(max_retries=1, timeout=timeout_s)
        results["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001 - kombu raises transport-specific errors
        results["broker"] = f"FAILED: {type(exc).__name__}: {exc}"
    human = "\n".join(f"{name:<12} {value}" for name, value in results.items())
    emit(results, as_json, human)
    sys.exit(RET_OK if all(v == "ok" for v in results.values()) else RET_FAILED)


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
        fleet = sorted(
            as_text(p) for p in conn.smembers(KeySpace(settings.clix_key_prefix).projects)
        )
        if len(fleet) != 1:
            known = f" (the fleet sends for {', '.join(fleet)})" if fleet else ""
            fail(f"give --project or set CLIX_PROJECT_ID{known}", RET_USAGE)
        project = fleet[0]
    state = circuit_breaker(settings, conn, project).state()
    stats = conn.hgetall(KeySpace(settings.clix_key_prefix).stats)
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
