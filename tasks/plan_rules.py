"""The trigger plan file format (DESIGN.md section 2) and its validation.

A trigger plan (conventionally ``.clix/api-trigger-plan.json``) is a
campaign's contract, written down: it names a campaign, its audience mode,
the ``trigger.*`` keys its audience rules filter on and the properties its
templates read::

    {"campaign_id": "019aa002-...", "audience": {"mode": "broadcast"},
     "dynamic_filter_keys": ["store_location"],
     "properties": {"store_location": {"type": "string", "required": true},
                    "customer_name": {"type": "string", "pii": true}}}

:func:`validate_plan_data` reports every broken rule as a :class:`Problem` at
its JSON path. Beyond the rules of DESIGN.md section 2 it reports what is
clearly wrong: a key given twice in one object (JSON keeps only the last), a
dynamic filter key listed twice or not declared under ``properties``,
``targets`` in a mode other than ``targets`` (Clix would ignore them), and
unknown keys, because a misspelled ``dynamic_filter_keys`` or ``reqired``
would silently switch a check off. Annotations are allowed: ``description``
and ``$comment`` in every object of the plan, ``$schema``, ``name``,
``title``, ``owner``, ``version`` and ``notes`` at the top, and any key
starting with ``x-``. An ``example`` of ``null`` counts as no example (as
Clix's own plan validator reads it). :func:`tasks.plan_file.validate_plan_file`
reads a file first (bad UTF-8, bad JSON and ``NaN`` are problems at ``$``).

Loaded plans and the checking of triggers against them are in
:mod:`tasks.plans`, which shares the helpers at the end of this module
(``matches_type``, ``kind_of``, ``json_path``...); :mod:`tasks.pii` reads keys with
``snake_case``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from config.settings import ConfigurationError
from tasks.models import MAX_ID_CHARS
from tasks.plan_values import (
    is_control,
    json_path,
    kind_of,
    matches_type,
    shown_value,
    snake_case,
    type_mismatch,
)

__all__ = [
    "AUDIENCE_MODES",
    "MAX_DYNAMIC_FILTER_KEYS",
    "PLAN_FILE_SUFFIX",
    "PLAN_TYPES",
    "PlanError",
    "Problem",
    "PropertySpec",
    "validate_plan_data",
]

PLAN_TYPES: Final = ("string", "number", "boolean", "datetime")
AUDIENCE_MODES: Final = ("broadcast", "targets", "default")
MAX_DYNAMIC_FILTER_KEYS: Final = 3
#: Folders are searched for files whose name ends with this (``api-trigger-plan.json`` too).
PLAN_FILE_SUFFIX: Final = ".json"

_SNAKE = re.compile(r"[a-z][a-z0-9_]*")
_SNAKE_TEXT = "^[a-z][a-z0-9_]*$"
_TARGET_IDS = ("project_user_id", "device_id")
_TOP_KEYS = ("campaign_id", "audience", "dynamic_filter_keys", "properties")
_SPEC_KEYS = ("type", "required", "pii", "example")
_NOTES = frozenset({"description", "$comment"})
_TOP_NOTES = _NOTES | {"$schema", "name", "title", "owner", "version", "notes"}
#: Type names people write, and the plan type they mean.
_TYPE_HINTS = dict.fromkeys(("integer", "int", "float", "double", "decimal"), "number") | {
    "bool": "boolean",
    "str": "string",
    "text": "string",
    "date": "datetime",
    "timestamp": "datetime",
}


@dataclass(frozen=True)
class Problem:
    """One broken rule of a plan, at a JSON path such as ``$.audience.targets[1]``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PlanError(ConfigurationError):
    """A plan is invalid, or two plans name one campaign: a worker refuses to start."""

    def __init__(
        self, message: str, problems: Iterable[Problem] = (), source: Path | None = None
    ) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(message)


@dataclass(frozen=True)
class PropertySpec:
    """What a plan says about one trigger property."""

    type: str
    required: bool = False
    pii: bool = False
    example: str | int | float | bool | None = None


# --- validation of plans ---------------------------------------------------------------


def validate_plan_data(data: object) -> list[Problem]:
    """Return every problem of a parsed plan (empty: the plan is valid)."""
    problems: list[Problem] = []
    _duplicate_keys(data, "$", problems)
    if not isinstance(data, dict):
        return [*problems, Problem("$", f"a trigger plan is a JSON object, got {kind_of(data)}")]
    _check_campaign_id(data, problems)
    _check_audience(data, problems)
    declared = _check_properties(data, problems)
    _check_dynamic_filter_keys(data, declared, problems)
    _unknown_keys(data, "$", _TOP_KEYS, _TOP_NOTES, problems)
    return problems


def _duplicate_keys(value: object, path: str, problems: list[Problem]) -> None:
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            problems.append(Problem(json_path(path, key), "given twice; JSON keeps only the last"))
        for key, item in value.items():
            _duplicate_keys(item, json_path(path, key), problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _duplicate_keys(item, json_path(path, index), problems)


def _check_campaign_id(data: dict[str, Any], problems: list[Problem]) -> None:
    if "campaign_id" not in data:
        problems.append(Problem("$.campaign_id", "required: the campaign's id in Clix"))
        return
    value = data["campaign_id"]
    message = None
    if not isinstance(value, str):
        message = f"must be a string, got {kind_of(value)}"
    elif not value.strip():
        message = "must not be empty"
    elif len(value) > MAX_ID_CHARS:
        message = f"must be at most {MAX_ID_CHARS} characters, got {len(value)}"
    elif bad := sorted({c for c in value if c in "/?#" or c.isspace() or is_control(c)}):
        shown = ", ".join(repr(c) for c in bad)
        message = f"must be usable as a URL path segment; it contains {shown}"
    if message:
        problems.append(Problem("$.campaign_id", message))


def _check_audience(data: dict[str, Any], problems: list[Problem]) -> None:
    if "audience" not in data:
        return
    audience = data["audience"]
    if not isinstance(audience, dict):
        message = f'must be an object such as {{"mode": "broadcast"}}, got {kind_of(audience)}'
        problems.append(Problem("$.audience", message))
        return
    mode = audience.get("mode", "default")
    if mode not in AUDIENCE_MODES:
        choices = " | ".join(AUDIENCE_MODES)
        problems.append(Problem("$.audience.mode", f"must be {choices}, got {shown_value(mode)}"))
        mode = None
    targets = audience.get("targets")
    if mode == "targets" and not (isinstance(targets, list) and targets):
        given = "missing" if "targets" not in audience else f"got {shown_value(targets)}"
        message = f"mode targets needs a non-empty array of targets, {given}"
        problems.append(Problem("$.audience.targets", message))
    elif "targets" in audience and mode in ("broadcast", "default"):
        message = f"only used in mode targets; in mode {mode} Clix ignores them"
        problems.append(Problem("$.audience.targets", message))
    elif isinstance(targets, list):
        for index, target in enumerate(targets):
            _check_target(target, f"$.audience.targets[{index}]", problems)
    if "broadcast" in audience:
        hint = 'the plan says "mode": "broadcast"; the trigger says "broadcast": true'
        problems.append(Problem("$.audience.broadcast", f"unknown key; {hint}"))
    _unknown_keys(audience, "$.audience", ("mode", "targets", "broadcast"), _NOTES, problems)


def _check_target(target: object, path: str, problems: list[Problem]) -> None:
    if not isinstance(target, dict):
        message = (
            f"a target is an object naming project_user_id or device_id, got {kind_of(target)}"
        )
        problems.append(Problem(path, message))
        return
    given = [name for name in _TARGET_IDS if name in target]
    if len(given) == 2:
        message = "names both project_user_id and device_id; a target names exactly one"
        problems.append(Problem(path, message))
    elif not given:
        message = "names neither project_user_id nor device_id; a target names exactly one"
        problems.append(Problem(path, message))
    for name in given:
        if not (isinstance(target[name], str) and target[name].strip()):
            problems.append(Problem(json_path(path, name), "must be a non-empty string"))
    _unknown_keys(target, path, _TARGET_IDS, frozenset(), problems)


def _check_properties(data: dict[str, Any], problems: list[Problem]) -> set[str] | None:
    props = data.get("properties")
    if not isinstance(props, dict) or not props:
        got = "missing" if "properties" not in data else f"got {shown_value(props)}"
        message = f"must be a non-empty object declaring each trigger property, {got}"
        problems.append(Problem("$.properties", message))
        return set() if isinstance(props, dict) else None
    for key, spec in props.items():
        path = json_path("$.properties", key)
        if not _SNAKE.fullmatch(key):
            hint = (
                f"; did you mean {snake_case(key)!r}?" if _SNAKE.fullmatch(snake_case(key)) else ""
            )
            problems.append(Problem(path, f"key must be snake_case ({_SNAKE_TEXT}){hint}"))
        _check_spec(spec, path, problems)
    return set(props)


def _check_spec(spec: object, path: str, problems: list[Problem]) -> None:
    if not isinstance(spec, dict):
        message = f'must be an object such as {{"type": "string"}}, got {kind_of(spec)}'
        problems.append(Problem(path, message))
        return
    kind = spec.get("type")
    if kind not in PLAN_TYPES:
        got = "missing" if "type" not in spec else f"got {shown_value(kind)}"
        hint = (
            f" (use {_TYPE_HINTS[kind]!r})" if isinstance(kind, str) and kind in _TYPE_HINTS else ""
        )
        message = f"must be one of {', '.join(PLAN_TYPES)}; {got}{hint}"
        problems.append(Problem(json_path(path, "type"), message))
        kind = None
    for flag in ("required", "pii"):
        if flag in spec and not isinstance(spec[flag], bool):
            message = f"must be true or false, got {shown_value(spec[flag])}"
            problems.append(Problem(json_path(path, flag), message))
    example = spec.get("example")
    if isinstance(example, dict | list):
        message = f"must be a primitive (string, number or boolean), got {kind_of(example)}"
        problems.append(Problem(json_path(path, "example"), message))
    elif example is not None and kind is not None and not matches_type(kind, example):
        message = f"{shown_value(example)} does not match the type: {type_mismatch(kind, example)}"
        problems.append(Problem(json_path(path, "example"), message))
    _unknown_keys(spec, path, _SPEC_KEYS, _NOTES, problems)


def _check_dynamic_filter_keys(
    data: dict[str, Any], declared: set[str] | None, problems: list[Problem]
) -> None:
    keys = data.get("dynamic_filter_keys", [])
    if not isinstance(keys, list):
        message = f"must be an array of property names, got {kind_of(keys)}"
        problems.append(Problem("$.dynamic_filter_keys", message))
        return
    if len(keys) > MAX_DYNAMIC_FILTER_KEYS:
        message = (
            f"lists {len(keys)} keys; Clix filters an audience on at most "
            f"{MAX_DYNAMIC_FILTER_KEYS} attributes"
        )
        problems.append(Problem("$.dynamic_filter_keys", message))
    seen: set[str] = set()
    for index, key in enumerate(keys):
        path = f"$.dynamic_filter_keys[{index}]"
        if not isinstance(key, str) or not _SNAKE.fullmatch(key):
            message = f"must be a snake_case string ({_SNAKE_TEXT}), got {shown_value(key)}"
            problems.append(Problem(path, message))
        elif key in seen:
            problems.append(Problem(path, f"{key!r} is listed twice"))
        elif declared is not None and key not in declared:
            problems.append(Problem(path, f"{key!r} is not declared under properties"))
        if isinstance(key, str):
            seen.add(key)


def _unknown_keys(
    obj: dict[str, Any],
    path: str,
    known: tuple[str, ...],
    notes: frozenset[str],
    problems: list[Problem],
) -> None:
    for key in obj:
        if key in known or key in notes or key.startswith("x-"):
            continue
        guess = snake_case(key) if snake_case(key) in known else None
        guess = guess or next(iter(difflib.get_close_matches(key, known, n=1, cutoff=0.75)), None)
        hint = f"; did you mean {guess!r}?" if guess else ""
        problems.append(Problem(json_path(path, key), f"unknown key{hint}"))
