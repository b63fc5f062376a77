"""``clix-worker plan``: validate trigger plans and write starter plans.

``plan validate PATH...`` checks plan files, and folders searched the way
``CLIX_PLANS`` is (every ``*.json`` file, see
:meth:`tasks.plans.PlanRegistry.load`), against every rule of DESIGN.md
section 2 (:mod:`tasks.plan_rules`), and reports every problem with its JSON
path. Two valid plans for one campaign are reported too, since a worker would
refuse to start with them.
``plan init --campaign ID`` writes a starter plan (:func:`starter_plan`) from
a sample trigger or from flags.

Exit codes (DESIGN.md section 4): 0 every plan valid / plan written; 1 a plan
is invalid, or ``init`` refused to overwrite or could not write; 2 bad usage:
a path that is missing or unreadable, a folder without plans, an unusable
sample trigger.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from worker.cli.console import RET_FAILED, RET_OK, RET_USAGE

__all__ = ["plan", "starter_plan"]

DEFAULT_OUTPUT = Path(".clix") / "api-trigger-plan.json"
_ISO_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ].*)?")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"clix-worker: {message}", err=True)
    sys.exit(code)


@click.group("plan")
def plan() -> None:
    """Check and write campaign contracts (trigger plans)."""


@plan.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def validate(paths: tuple[Path, ...], as_json: bool) -> None:
    """Validate plan files, or the plans found in folders."""
    from tasks.plan_file import validate_plan_file
    from tasks.plan_rules import PLAN_FILE_SUFFIX, Problem
    from tasks.plans import discover_plan_files

    usage_error = False
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = discover_plan_files(path)
            if not found:
                click.echo(f"clix-worker: no *{PLAN_FILE_SUFFIX} files under {path}", err=True)
                usage_error = True
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            click.echo(f"clix-worker: no such file or folder: {path}", err=True)
            usage_error = True

    results: dict[Path, list[Problem]] = {}
    campaigns: dict[str, list[Path]] = {}
    for file in dict.fromkeys(files):
        try:
            results[file] = validate_plan_file(file)
        except OSError as exc:
            click.echo(f"clix-worker: cannot read {file}: {exc.strerror or exc}", err=True)
            usage_error = True
            continue
        if not results[file]:
            campaign_id = json.loads(file.read_text(encoding="utf-8-sig"))["campaign_id"]
            campaigns.setdefault(campaign_id, []).append(file)
    for campaign_id, owners in campaigns.items():
        for file in owners if len(owners) > 1 else ():
            others = ", ".join(str(o) for o in owners if o != file)
            message = f"campaign {campaign_id} also has a plan in {others}; keep one"
            results[file].append(Problem("$.campaign_id", message))

    if as_json:
        report: list[dict[str, Any]] = [
            {
                "path": str(file),
                "valid": not problems,
                "problems": [{"path": p.path, "message": p.message} for p in problems],
            }
            for file, problems in results.items()
        ]
        click.echo(json.dumps(report, ensure_ascii=False))
    else:
        for file, problems in results.items():
            for problem in problems:
                click.echo(f"{file}: {problem}")
            if not problems:
                click.echo(f"{file}: OK")
    invalid = any(results.values())
    sys.exit(RET_USAGE if usage_error else RET_FAILED if invalid else RET_OK)


@plan.command("init")
@click.option("--campaign", "campaign_id", required=True, help="The campaign id in Clix.")
@click.option(
    "--from-trigger",
    "sample",
    type=click.Path(path_type=Path),
    help="A sample trigger (JSON: task kwargs or request body) to infer the properties from.",
)
@click.option(
    "--property",
    "properties",
    multiple=True,
    metavar="NAME[:TYPE]",
    help="Declare a property (repeatable); TYPE is string (default), number, boolean, datetime.",
)
@click.option(
    "--filter-key",
    "filter_keys",
    multiple=True,
    metavar="NAME",
    help="A trigger.* key the campaign's audience rules filter on (repeatable, at most 3).",
)
@click.option(
    "--audience",
    "audience_mode",
    type=click.Choice(["broadcast", "targets", "default"]),
    help="Audience mode (default: the sample trigger's, else default).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_OUTPUT,
    show_default=True,
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(
    campaign_id: str,
    sample: Path | None,
    properties: tuple[str, ...],
    filter_keys: tuple[str, ...],
    audience_mode: str | None,
    output: Path,
    force: bool,
) -> None:
    """Write a starter plan, every property required; edit it, then `plan validate` it."""
    trigger: Any = None
    if sample is not None:
        try:
            trigger = json.loads(sample.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            _fail(f"cannot read {sample}: {exc.strerror or exc}", RET_USAGE)
        except ValueError as exc:
            _fail(f"{sample} is not JSON: {exc}", RET_USAGE)
        if not isinstance(trigger, dict):
            _fail(f"{sample}: a sample trigger is a JSON object", RET_USAGE)
    try:
        data = starter_plan(
            campaign_id,
            trigger=trigger,
            properties=list(properties),
            audience_mode=audience_mode,
            dynamic_filter_keys=list(filter_keys),
        )
    except ValueError as exc:
        _fail(f"cannot write a valid plan: {exc}", RET_USAGE)
    if output.exists() and not force:
        _fail(f"{output} exists; use --force to overwrite it", RET_FAILED)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}", RET_FAILED)
    click.echo(str(output))
    if not data["dynamic_filter_keys"]:
        click.echo(
            "note: list the trigger.* keys the campaign's audience rules use under "
            "dynamic_filter_keys (or pass --filter-key)",
            err=True,
        )


# --- starter plans ------------------------------------------------------------------------
# Like the commands above, these import from ``tasks`` only when they run.


def starter_plan(
    campaign_id: str,
    *,
    trigger: dict[str, Any] | None = None,
    properties: list[str] | None = None,
    audience_mode: str | None = None,
    dynamic_filter_keys: list[str] | None = None,
) -> dict[str, Any]:
    """A starter plan for ``plan init``; raises ``ValueError`` naming what cannot be planned.

    Types come from the sample ``trigger`` (kwargs or request body): booleans
    are ``boolean``, numbers ``number``, ISO-8601 date strings ``datetime``,
    other strings ``string``; sample values become examples, except for
    ``pii`` properties (keys found by :func:`tasks.pii.pii_like_keys`), whose values stay
    out of the file. ``properties`` adds ``NAME`` or ``NAME:TYPE`` entries
    (type ``string`` by default; a type given here wins over the sample's).
    Every property is required. The audience mode is ``audience_mode``, else
    the sample's (broadcast, targets or none), else ``default``; a targets
    plan without sample targets gets a placeholder target to edit.
    """
    from tasks.pii import _pii_key, pii_like_keys
    from tasks.plan_rules import validate_plan_data
    from tasks.plan_values import matches_type

    trigger = trigger or {}
    unknown = sorted(set(trigger) - {"campaign_id", "idempotency_key", "audience", "properties"})
    if unknown:
        raise ValueError(f"not a trigger: unknown keys {', '.join(unknown)}")
    if trigger.get("campaign_id", campaign_id) != campaign_id:
        raise ValueError(
            f"the sample trigger is for campaign {trigger['campaign_id']}, not {campaign_id}"
        )
    sample = trigger.get("properties") or {}
    audience = trigger.get("audience") or {}
    if not isinstance(sample, dict) or not isinstance(audience, dict):
        raise ValueError("the sample trigger's audience and properties must be objects")
    pii = set(pii_like_keys(sample)) | {n for n in (properties or []) if _pii_key(n.split(":")[0])}
    specs: dict[str, dict[str, Any]] = {}
    for name, value in sample.items():
        specs[name] = {"type": _infer_type(name, value), "required": True}
        if name not in pii:
            specs[name]["example"] = value
    for entry in properties or []:
        name, _, kind = entry.partition(":")
        spec = specs.setdefault(name, {"type": kind or "string", "required": True})
        if kind and kind != spec["type"]:
            spec["type"] = kind
            if "example" in spec and not matches_type(kind, spec["example"]):
                del spec["example"]
    if not specs:
        raise ValueError("no properties: give a sample trigger with properties, or property names")
    for name in pii & specs.keys():
        specs[name]["pii"] = True
    targets = audience.get("targets")
    mode = audience_mode or (
        "broadcast" if audience.get("broadcast") is True else "targets" if targets else "default"
    )
    plan: dict[str, Any] = {"campaign_id": campaign_id, "audience": {"mode": mode}}
    if mode == "targets":
        plan["audience"]["targets"] = targets or [{"project_user_id": "example-user-id"}]
    plan["dynamic_filter_keys"] = list(dynamic_filter_keys or [])
    plan["properties"] = specs
    problems = validate_plan_data(plan)
    if problems:
        raise ValueError("; ".join(map(str, problems)))
    return plan


def _infer_type(name: str, value: object) -> str:
    from tasks.plan_values import is_datetime, kind_of

    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "datetime" if _ISO_DATE_START.fullmatch(value) and is_datetime(value) else "string"
    raise ValueError(f"properties.{name}: {kind_of(value)} has no plan type; send a primitive")
