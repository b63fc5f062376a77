"""``clix-worker enqueue``: validate and enqueue one trigger from flags, or many from a file.

A file is JSON lines, one trigger (task kwargs) per line, enqueued all or
nothing: every line is checked first and a single bad line enqueues none.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from worker.cli.console import RET_USAGE, emit, fail, load_settings

__all__ = ["enqueue"]


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
