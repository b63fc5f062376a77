"""``clix-worker``: operational verbs for the trigger pipeline.

Exit codes (DESIGN.md section 4): :data:`RET_OK` success; :data:`RET_FAILED`
the operation failed or what was checked is invalid (``enqueue`` refusing a
trigger, ``replay`` of an id not in the DLQ, ``status`` of an unknown key);
:data:`RET_USAGE` bad usage (unknown option, missing or unreadable file).

None of the inspection verbs (``status``, ``dlq ...``) nor ``enqueue`` need
the Clix API key.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from config.keys import KeySpace, Scope
from config.settings import ConfigurationError, get_settings
from worker.console import (
    RET_FAILED,
    RET_OK,
    RET_USAGE,
    dead_letter_queue,
    emit,
    fail,
    idempotency_store,
    load_settings,
)

__all__ = ["RET_FAILED", "RET_OK", "RET_USAGE", "cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Trigger Clix campaigns from a queue: enqueue, inspect, operate the dead-letter queue."""


# --- enqueue ---------------------------------------------------------------


def _property(value: str) -> tuple[str, Any]:
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"expected NAME=VALUE, got {value!r}")
    try:
        return name, json.loads(raw)  # 3 -> number, true -> boolean
    except ValueError:
        return name, raw


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", RET_USAGE)
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                yield number, exc


@cli.command()
@click.argument("campaign_id", required=False)
@click.argument("idempotency_key", required=False)
@click.option("--broadcast", is_flag=True, help="Send to everyone in the campaign's segment.")
@click.option("--user", "users", multiple=True, help="Target a project_user_id (repeatable).")
@click.option("--device", "devices", multiple=True, help="Target a device_id (repeatable).")
@click.option("--property", "-p", "props", multiple=True, help="NAME=VALUE (JSON or text).")
@click.option(
    "--file",
    "-f",
    "file",
    type=click.Path(path_type=Path),
    help="JSON-lines file, one trigger (task kwargs) per line.",
)
@click.option("--json", "as_json", is_flag=True, help="Print task ids as JSON.")
def enqueue(
    campaign_id: str | None,
    idempotency_key: str | None,
    broadcast: bool,
    users: tuple[str, ...],
    devices: tuple[str, ...],
    props: tuple[str, ...],
    file: Path | None,
    as_json: bool,
) -> None:
    """Validate and enqueue one trigger from flags, or many from --file."""
    load_settings()
    from tasks.errors import InvalidTrigger
    from tasks.models import TriggerRequest
    from tasks.producer import enqueue_many, enqueue_trigger

    if file is not None:
        if campaign_id or idempotency_key:
            fail("give either CAMPAIGN_ID IDEMPOTENCY_KEY or --file, not both", RET_USAGE)
        if not file.is_file():
            fail(f"cannot read {file}: no such file", RET_USAGE)
        triggers, problems = [], []
        for number, item in _read_jsonl(file):
            try:
                if isinstance(item, Exception):
                    raise InvalidTrigger([f"not JSON: {item}"])
                triggers.append(TriggerRequest.parse(item).to_kwargs())
            except InvalidTrigger as exc:
                problems.append(f"{file}:{number}: {exc}")
        if problems:
            # All or nothing: a half-enqueued file is hard to resume safely.
            fail("nothing enqueued:\n" + "\n".join(problems))
        ids: list[str] = []
        with click.progressbar(length=len(triggers), label="enqueueing", file=sys.stderr) as bar:
            for task_id in enqueue_many(triggers):
                ids.append(task_id)
                bar.update(1)
        emit({"enqueued": len(ids), "task_ids": ids}, as_json, f"enqueued {len(ids)} triggers")
        return

    if not campaign_id or not idempotency_key:
        fail("give CAMPAIGN_ID and IDEMPOTENCY_KEY, or --file", RET_USAGE)
    audience: dict[str, Any] | None = None
    if broadcast or users or devices:
        audience = {}
        if broadcast:
            audience["broadcast"] = True
        targets = [{"project_user_id": u} for u in users] + [{"device_id": d} for d in devices]
        if targets:
            audience["targets"] = targets
    try:
        properties = dict(_property(p) for p in props) if props else None
        result = enqueue_trigger(
            campaign_id, idempotency_key, audience=audience, properties=properties
        )
    except click.BadParameter as exc:
        fail(f"--property: {exc.message}", RET_USAGE)
    except InvalidTrigger as exc:
        fail(str(exc))
    emit({"task_id": result.id}, as_json, f"enqueued task {result.id}")


# --- status ----------------------------------------------------------------


@cli.command()
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


# --- check -------------------------------------------------------------------


@cli.command()
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
        conn = redis_lib.Redis.from_url(
            settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
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


# --- health ------------------------------------------------------------------


@cli.command()
@click.option("--project", help="Project id (default CLIX_PROJECT_ID).")
@click.option("--json", "as_json", is_flag=True)
def health(project: str | None, as_json: bool) -> None:
    """Circuit breaker, rate limit and DLQ depth; exit 1 while the breaker is open."""
    from tasks.context import circuit_breaker, redis_client

    settings = load_settings()
    project = project or settings.clix_project_id
    if not project:
        fail("give --project or set CLIX_PROJECT_ID", RET_USAGE)
    conn = redis_client(settings)
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


# --- processes ---------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sandbox(args: tuple[str, ...]) -> None:
    """Run the local Clix-compatible sandbox server (see `clix-worker sandbox --help`)."""
    from worker.sandbox import main as sandbox_main

    sys.exit(sandbox_main(list(args)))


@cli.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def metrics(args: tuple[str, ...]) -> None:
    """Serve Prometheus metrics of workers sharing PROMETHEUS_MULTIPROC_DIR (see --help)."""
    from worker.metrics import main as metrics_main

    sys.exit(metrics_main(list(args)))


@cli.command()
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--concurrency", "-c", default=2, show_default=True)
@click.option(
    "--demo/--no-demo",
    default=True,
    show_default=True,
    help="Enqueue one demo trigger and print its result.",
)
@click.option("--exit-after-demo", is_flag=True, help="Stop once the demo trigger is done.")
def up(flower_port: int, concurrency: int, demo: bool, exit_after_demo: bool) -> None:
    """Run everything on embedded defaults: Redis, sandbox (without credentials), worker, Flower."""
    from worker.quickstart import run

    sys.exit(
        run(
            flower_port=flower_port,
            concurrency=concurrency,
            demo=demo,
            exit_after_demo=exit_after_demo,
        )
    )


def _register_command_groups() -> None:
    from worker.dlq_commands import dlq
    from worker.plan_commands import plan

    cli.add_command(dlq)
    cli.add_command(plan)


_register_command_groups()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    import redis

    try:
        cli.main(args=argv, prog_name="clix-worker", standalone_mode=True)
    except redis.RedisError as exc:
        click.echo(
            f"clix-worker: Redis error ({type(exc).__name__}): {exc}; check REDIS_URL", err=True
        )
        return RET_FAILED
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else RET_FAILED
    return RET_OK
