"""``clix-worker enqueue``: validate and enqueue one trigger from flags, or many from a file.

A file is JSON lines, one trigger (task kwargs) per line, enqueued all or
nothing: every line is checked first and a single bad line enqueues none.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from worker.cli.console import RET_USAGE, emit, fail, load_settings
from worker.cli.time_filter import parse_duration

__all__ = ["enqueue"]


def _property(value: str) -> tuple[str, Any]:
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"expected NAME=VALUE, got {value!r}")
    if any(char.isspace() or not char.isprintable() for char in name):
        suggestion = "_".join(name.lower().split())
        raise click.BadParameter(
            f"property name {name!r} has a space; Clix properties are snake_case "
            f"(e.g. {suggestion!r})"
        )
    try:
        return name, json.loads(raw)  # 3 -> number, true -> boolean
    except ValueError:
        return name, raw


def _properties(props: tuple[str, ...]) -> dict[str, Any] | None:
    """``-p NAME=VALUE`` options as a dict; a name given twice is refused."""
    if not props:
        return None
    properties: dict[str, Any] = {}
    for item in props:
        name, value = _property(item)
        if name in properties:
            raise click.BadParameter(f"{name!r} given twice; give each property once")
        properties[name] = value
    return properties


def _when(at: str | None, within: str | None) -> tuple[datetime | None, float | None]:
    """``--at`` / ``--in`` as ``(send_at, delay_s)``; a bad value is a usage error."""
    if at is not None and within is not None:
        fail("give --at or --in, not both", RET_USAGE)
    if at is not None:
        try:
            moment = datetime.fromisoformat(at.strip())
        except ValueError:
            fail(f"--at: {at!r} is not an ISO-8601 time (2026-12-01T18:30:00Z)", RET_USAGE)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), None
    if within is not None:
        try:
            return None, parse_duration(within)
        except ValueError as exc:
            fail(f"--in: {exc}", RET_USAGE)
    return None, None


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


@click.command()
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
@click.option("--at", "at", metavar="TIME", help="Send at this ISO-8601 time (UTC if no zone).")
@click.option("--in", "within", metavar="DURATION", help="Send this long from now: 90s, 15m, 2h.")
@click.option("--json", "as_json", is_flag=True, help="Print task ids as JSON.")
def enqueue(
    campaign_id: str | None,
    idempotency_key: str | None,
    broadcast: bool,
    users: tuple[str, ...],
    devices: tuple[str, ...],
    props: tuple[str, ...],
    file: Path | None,
    at: str | None,
    within: str | None,
    as_json: bool,
) -> None:
    """Validate and enqueue one trigger from flags, or many from --file.

    --at / --in schedule the trigger instead: it waits in Redis and is sent
    within about a second after its time; its idempotency key is taken now.
    """
    settings = load_settings()
    from tasks.errors import InvalidTrigger
    from tasks.models import TriggerRequest
    from tasks.producer import enqueue_many, enqueue_trigger

    if file is not None:
        if campaign_id or idempotency_key:
            fail("give either CAMPAIGN_ID IDEMPOTENCY_KEY or --file, not both", RET_USAGE)
        if at is not None or within is not None:
            fail("--at / --in schedule one trigger; not with --file", RET_USAGE)
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

    if campaign_id is None or idempotency_key is None:
        fail("give CAMPAIGN_ID and IDEMPOTENCY_KEY, or --file", RET_USAGE)
    if not campaign_id.strip():
        fail("the campaign id is empty", RET_USAGE)
    if not idempotency_key.strip():
        fail("the idempotency key is empty", RET_USAGE)
    send_at, delay_s = _when(at, within)
    audience: dict[str, Any] | None = None
    if broadcast or users or devices:
        audience = {}
        if broadcast:
            audience["broadcast"] = True
        targets = [{"project_user_id": u} for u in users] + [{"device_id": d} for d in devices]
        if targets:
            audience["targets"] = targets
    from tasks.dlq_entry import iso_time
    from tasks.scheduler import producer_schedule

    scheduled = send_at is not None or delay_s is not None
    schedule = producer_schedule(settings)
    before = schedule.get(campaign_id, idempotency_key) if scheduled else None
    try:
        properties = _properties(props)
        result = enqueue_trigger(
            campaign_id,
            idempotency_key,
            audience=audience,
            properties=properties,
            send_at=send_at,
            delay_s=delay_s,
        )
    except click.BadParameter as exc:
        fail(f"--property: {exc.message}", RET_USAGE)
    except InvalidTrigger as exc:
        fail(str(exc))
    if not scheduled:
        emit({"task_id": result.id}, as_json, f"enqueued task {result.id}")
        return
    record = schedule.get(campaign_id, idempotency_key)
    if record is None:  # the key was queued, in flight, done or cancelled already
        human = f"not scheduled: the key is taken (see `clix-worker status`); task {result.id}"
        emit({"task_id": result.id, "scheduled": False}, as_json, human)
        return
    when = iso_time(record.send_at_ms / 1000)
    again = before is not None
    human = f"{'already scheduled' if again else 'scheduled'} task {record.task_id} for {when}"
    emit({"task_id": record.task_id, "scheduled": True, "send_at": when}, as_json, human)
