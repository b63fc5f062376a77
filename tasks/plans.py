"""Trigger plans: each campaign's contract, written down and executable.

A trigger plan (conventionally ``.clix/api-trigger-plan.json``, DESIGN.md
section 2) names a campaign, its audience mode, the ``trigger.*`` keys its
audience rules filter on and the properties its templates read::

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
Clix's own plan validator reads it).

:class:`PlanRegistry` loads the plans named by ``CLIX_PLANS`` and checks
triggers against them (:meth:`TriggerPlan.check`); :func:`redact` hides the
values of ``pii`` properties wherever a payload is shown. Messages about a
trigger name the field but never echo a value, so they are safe to log.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from config.settings import ConfigurationError
from tasks.models import MAX_ID_CHARS

__all__ = [
    "AUDIENCE_MODES",
    "PLAN_FILE_SUFFIX",
    "PLAN_TYPES",
    "REDACTED",
    "PlanError",
    "PlanRegistry",
    "Problem",
    "PropertySpec",
    "TriggerPlan",
    "discover_plan_files",
    "pii_like_keys",
    "redact",
    "starter_plan",
    "validate_plan_data",
    "validate_plan_file",
]

PLAN_TYPES: Final = ("string", "number", "boolean", "datetime")
AUDIENCE_MODES: Final = ("broadcast", "targets", "default")
MAX_DYNAMIC_FILTER_KEYS: Final = 3
#: Folders are searched for files whose name ends with this (``api-trigger-plan.json`` too).
PLAN_FILE_SUFFIX: Final = "api-trigger-plan.json"
REDACTED: Final = "[redacted]"

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
_SKIP_DIRS = frozenset({"node_modules", "__pycache__", "venv"})

#: Keys that name an e-mail address, a phone number or a person's name, matched
#: against the key in snake_case (``customerEmail`` is read as ``customer_email``).
PII_KEY_PATTERN: Final = re.compile(
    r"(?:^|_)(?:e_?mail|mail|phone|mobile|msisdn|tel|telephone|cellphone|fax)(?:_|$)"
    r"|^(?:(?:customer|client|user|member|recipient|sender|contact|buyer|patient|guest"
    r"|owner|holder|cardholder|staff|employee|driver|courier)_)?"
    r"(?:(?:first|last|full|given|family|middle|maiden|display|legal|nick|sur|user)_?)?name$"
)
_EMAIL_VALUE = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_PHONE_VALUE = re.compile(r"\+?[0-9(][0-9 ().-]{5,}[0-9]")
_NOT_PHONE = re.compile(r"\d{4}-\d{2}-\d{2}.*|\d{1,3}(?:\.\d{1,3}){3}")
_ISO_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ].*)?")


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
        return [*problems, Problem("$", f"a trigger plan is a JSON object, got {_kind(data)}")]
    _check_campaign_id(data, problems)
    _check_audience(data, problems)
    declared = _check_properties(data, problems)
    _check_dynamic_filter_keys(data, declared, problems)
    _unknown_keys(data, "$", _TOP_KEYS, _TOP_NOTES, problems)
    return problems


def validate_plan_file(path: Path) -> list[Problem]:
    """Validate one plan file; bad JSON is one problem at ``$``. Raises ``OSError``."""
    data, problems = _read(path)
    return problems or validate_plan_data(data)


def _read(path: Path) -> tuple[object, list[Problem]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, [Problem("$", f"not UTF-8 text (byte {exc.start})")]
    try:
        return json.loads(text, object_pairs_hook=_JSONObject.of, parse_constant=_no_nan), []
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        return None, [Problem("$", f"not valid JSON: {exc.msg} at {where}")]
    except ValueError as exc:
        return None, [Problem("$", f"not valid JSON: {exc}")]


class _JSONObject(dict[str, Any]):
    """A parsed JSON object that remembers the keys it was given more than once."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def of(cls, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = cls(pairs)
        names = [name for name, _ in pairs]
        obj.duplicates = tuple(dict.fromkeys(n for i, n in enumerate(names) if n in names[:i]))
        return obj


def _no_nan(constant: str) -> object:
    raise ValueError(f"{constant} is not a JSON number")


def _duplicate_keys(value: object, path: str, problems: list[Problem]) -> None:
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            problems.append(Problem(_at(path, key), "given twice; JSON keeps only the last"))
        for key, item in value.items():
            _duplicate_keys(item, _at(path, key), problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _duplicate_keys(item, _at(path, index), problems)


def _check_campaign_id(data: dict[str, Any], problems: list[Problem]) -> None:
    if "campaign_id" not in data:
        problems.append(Problem("$.campaign_id", "required: the campaign's id in Clix"))
        return
    value = data["campaign_id"]
    message = None
    if not isinstance(value, str):
        message = f"must be a string, got {_kind(value)}"
    elif not value.strip():
        message = "must not be empty"
    elif len(value) > MAX_ID_CHARS:
        message = f"must be at most {MAX_ID_CHARS} characters, got {len(value)}"
    elif bad := sorted({c for c in value if c in "/?#" or c.isspace() or _is_control(c)}):
        shown = ", ".join(repr(c) for c in bad)
        message = f"must be usable as a URL path segment; it contains {shown}"
    if message:
        problems.append(Problem("$.campaign_id", message))


def _check_audience(data: dict[str, Any], problems: list[Problem]) -> None:
    if "audience" not in data:
        return
    audience = data["audience"]
    if not isinstance(audience, dict):
        message = f'must be an object such as {{"mode": "broadcast"}}, got {_kind(audience)}'
        problems.append(Problem("$.audience", message))
        return
    mode = audience.get("mode", "default")
    if mode not in AUDIENCE_MODES:
        choices = " | ".join(AUDIENCE_MODES)
        problems.append(Problem("$.audience.mode", f"must be {choices}, got {_show(mode)}"))
        mode = None
    targets = audience.get("targets")
    if mode == "targets" and not (isinstance(targets, list) and targets):
        given = "missing" if "targets" not in audience else f"got {_show(targets)}"
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
        message = f"a target is an object naming project_user_id or device_id, got {_kind(target)}"
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
            problems.append(Problem(_at(path, name), "must be a non-empty string"))
    _unknown_keys(target, path, _TARGET_IDS, frozenset(), problems)


def _check_properties(data: dict[str, Any], problems: list[Problem]) -> set[str] | None:
    props = data.get("properties")
    if not isinstance(props, dict) or not props:
        got = "missing" if "properties" not in data else f"got {_show(props)}"
        message = f"must be a non-empty object declaring each trigger property, {got}"
        problems.append(Problem("$.properties", message))
        return set() if isinstance(props, dict) else None
    for key, spec in props.items():
        path = _at("$.properties", key)
        if not _SNAKE.fullmatch(key):
            hint = f"; did you mean {_snake(key)!r}?" if _SNAKE.fullmatch(_snake(key)) else ""
            problems.append(Problem(path, f"key must be snake_case ({_SNAKE_TEXT}){hint}"))
        _check_spec(spec, path, problems)
    return set(props)


def _check_spec(spec: object, path: str, problems: list[Problem]) -> None:
    if not isinstance(spec, dict):
        message = f'must be an object such as {{"type": "string"}}, got {_kind(spec)}'
        problems.append(Problem(path, message))
        return
    kind = spec.get("type")
    if kind not in PLAN_TYPES:
        got = "missing" if "type" not in spec else f"got {_show(kind)}"
        hint = (
            f" (use {_TYPE_HINTS[kind]!r})" if isinstance(kind, str) and kind in _TYPE_HINTS else ""
        )
        message = f"must be one of {', '.join(PLAN_TYPES)}; {got}{hint}"
        problems.append(Problem(_at(path, "type"), message))
        kind = None
    for flag in ("required", "pii"):
        if flag in spec and not isinstance(spec[flag], bool):
            message = f"must be true or false, got {_show(spec[flag])}"
            problems.append(Problem(_at(path, flag), message))
    example = spec.get("example")
    if isinstance(example, dict | list):
        message = f"must be a primitive (string, number or boolean), got {_kind(example)}"
        problems.append(Problem(_at(path, "example"), message))
    elif example is not None and kind is not None and not _matches(kind, example):
        message = f"{_show(example)} does not match the type: {_mismatch(kind, example)}"
        problems.append(Problem(_at(path, "example"), message))
    _unknown_keys(spec, path, _SPEC_KEYS, _NOTES, problems)


def _check_dynamic_filter_keys(
    data: dict[str, Any], declared: set[str] | None, problems: list[Problem]
) -> None:
    keys = data.get("dynamic_filter_keys", [])
    if not isinstance(keys, list):
        message = f"must be an array of property names, got {_kind(keys)}"
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
            message = f"must be a snake_case string ({_SNAKE_TEXT}), got {_show(key)}"
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
        guess = _snake(key) if _snake(key) in known else None
        guess = guess or next(iter(difflib.get_close_matches(key, known, n=1, cutoff=0.75)), None)
        hint = f"; did you mean {guess!r}?" if guess else ""
        problems.append(Problem(_at(path, key), f"unknown key{hint}"))


# --- parsed plans and trigger checks ----------------------------------------------------


@dataclass(frozen=True)
class TriggerPlan:
    """A valid plan, parsed. ``source`` is the file it came from, if any."""

    campaign_id: str
    audience_mode: str
    targets: tuple[dict[str, str], ...]
    dynamic_filter_keys: tuple[str, ...]
    properties: dict[str, PropertySpec]
    source: Path | None = None

    @classmethod
    def from_data(cls, data: object, source: Path | None = None) -> TriggerPlan:
        """Parse a plan; raise :class:`PlanError` listing every problem."""
        problems = validate_plan_data(data)
        if problems:
            where = f" {source}" if source else ""
            message = f"invalid trigger plan{where}: " + "; ".join(map(str, problems))
            raise PlanError(message, problems, source)
        assert isinstance(data, dict)
        audience = data.get("audience", {})
        specs = {
            name: PropertySpec(
                type=spec["type"],
                required=spec.get("required", False),
                pii=spec.get("pii", False),
                example=spec.get("example"),
            )
            for name, spec in data["properties"].items()
        }
        return cls(
            campaign_id=data["campaign_id"],
            audience_mode=audience.get("mode", "default"),
            targets=tuple(dict(t) for t in audience.get("targets", [])),
            dynamic_filter_keys=tuple(data.get("dynamic_filter_keys", [])),
            properties=specs,
            source=source,
        )

    @classmethod
    def from_file(cls, path: Path) -> TriggerPlan:
        """Read and parse a plan file; raises ``OSError`` or :class:`PlanError`."""
        data, problems = _read(path)
        if problems:
            message = f"invalid trigger plan {path}: " + "; ".join(map(str, problems))
            raise PlanError(message, problems, path)
        return cls.from_data(data, source=path)

    @property
    def pii_keys(self) -> frozenset[str]:
        """Properties whose values are redacted wherever a payload is shown."""
        return frozenset(name for name, spec in self.properties.items() if spec.pii)

    def check(self, kwargs: Mapping[str, Any], *, strict: bool) -> tuple[list[str], list[str]]:
        """Check a trigger's kwargs against the plan; return ``(errors, warnings)``.

        Unknown property keys are errors when ``strict``, warnings otherwise.
        Messages name the field and never echo a value.
        """
        errors: list[str] = []
        warnings: list[str] = []
        plan = f"the plan for campaign {self.campaign_id}"
        self._check_audience(kwargs.get("audience"), plan, errors)
        props = kwargs.get("properties")
        props = {} if props is None else props
        if not isinstance(props, dict):
            return [*errors, f"properties: expected an object, got {_kind(props)}"], warnings
        for name, spec in self.properties.items():
            where = _at("properties", name)
            if name in self.dynamic_filter_keys:
                filtered = f"{plan} filters its audience on it (dynamic filter key)"
                value = props.get(name)
                if value is None or (isinstance(value, str) and not value.strip()):
                    state = "missing" if name not in props else "empty"
                    errors.append(f"{where}: {state}, but {filtered}")
                    continue
            elif name not in props:
                if spec.required:
                    errors.append(f"{where}: required by {plan} but missing")
                continue
            if not _matches(spec.type, props[name]):
                errors.append(f"{where}: {_mismatch(spec.type, props[name])}")
        for name in props:
            if name not in self.properties:
                guess = _snake(name) if _snake(name) in self.properties else None
                guess = guess or next(
                    iter(difflib.get_close_matches(name, self.properties, 1)), None
                )
                hint = f"; did you mean {guess!r}?" if guess else ""
                message = f"{_at('properties', name)}: not declared in {plan}{hint}"
                (errors if strict else warnings).append(message)
        return errors, warnings

    def _check_audience(self, audience: object, plan: str, errors: list[str]) -> None:
        broadcast = isinstance(audience, dict) and audience.get("broadcast") is True
        targets = audience.get("targets") if isinstance(audience, dict) else None
        has_targets = isinstance(targets, list) and bool(targets)
        mode = self.audience_mode
        if mode == "broadcast":
            if not broadcast:
                errors.append(f'audience.broadcast: {plan} is broadcast; send "broadcast": true')
            if has_targets:
                errors.append(f"audience.targets: {plan} is broadcast; send no targets")
        elif mode == "targets":
            if broadcast:
                errors.append(f"audience.broadcast: {plan} sends to targets; send no broadcast")
            if not has_targets:
                errors.append(f"audience.targets: {plan} sends to targets; send at least one")
        elif broadcast or has_targets:
            errors.append(f"audience: {plan} uses the campaign's default audience; send none")


class PlanRegistry:
    """The loaded plans, one per campaign."""

    def __init__(self, plans: Iterable[TriggerPlan] = ()) -> None:
        self._plans: dict[str, TriggerPlan] = {}
        for plan in plans:
            other = self._plans.get(plan.campaign_id)
            if other is not None:
                raise PlanError(
                    f"two trigger plans for campaign {plan.campaign_id}: {other.source} and "
                    f"{plan.source}; keep one"
                )
            self._plans[plan.campaign_id] = plan

    @classmethod
    def load(cls, spec: str | None) -> PlanRegistry:
        """Load the plans named by a ``CLIX_PLANS`` value.

        ``spec`` lists files and folders separated by ``os.pathsep`` or commas.
        A file is read whatever its name. A folder is searched recursively for
        files whose name ends with ``api-trigger-plan.json`` (so
        ``.clix/api-trigger-plan.json`` and ``store-pickup.api-trigger-plan.json``),
        skipping hidden folders other than ``.clix``, ``node_modules``,
        ``__pycache__`` and ``venv``. A missing path, a folder without plans,
        an unreadable or invalid plan and two plans for one campaign raise
        :class:`PlanError` naming the files.
        """
        plans: list[TriggerPlan] = []
        seen: set[Path] = set()
        for entry in re.split(f"[{re.escape(os.pathsep)},]", spec or ""):
            if not entry.strip():
                continue
            path = Path(entry.strip()).expanduser()
            if path.is_dir():
                files = discover_plan_files(path)
                if not files:
                    raise PlanError(f"CLIX_PLANS: no *{PLAN_FILE_SUFFIX} files under {path}")
            elif path.exists():
                files = [path]
            else:
                raise PlanError(f"CLIX_PLANS: no such file or folder: {path}")
            for file in files:
                if file.resolve() in seen:
                    continue
                seen.add(file.resolve())
                try:
                    plans.append(TriggerPlan.from_file(file))
                except OSError as exc:
                    raise PlanError(f"CLIX_PLANS: cannot read {file}: {exc}") from None
                except PlanError as exc:
                    raise PlanError(f"CLIX_PLANS: {exc}", exc.problems, exc.source) from None
        try:
            return cls(plans)
        except PlanError as exc:
            raise PlanError(f"CLIX_PLANS: {exc}") from None

    def get(self, campaign_id: str) -> TriggerPlan | None:
        """The plan of a campaign, or ``None``."""
        return self._plans.get(campaign_id)

    def __len__(self) -> int:
        return len(self._plans)

    def __iter__(self) -> Iterator[TriggerPlan]:
        return iter(self._plans.values())

    def __contains__(self, campaign_id: object) -> bool:
        return campaign_id in self._plans

    def _plan_for(self, kwargs: Mapping[str, Any]) -> TriggerPlan | None:
        campaign_id = kwargs.get("campaign_id")
        return self._plans.get(campaign_id) if isinstance(campaign_id, str) else None

    def check(self, kwargs: dict[str, Any], *, strict: bool) -> tuple[list[str], list[str]]:
        """``(errors, warnings)`` of a trigger against its campaign's plan; none without one."""
        plan = self._plan_for(kwargs)
        return plan.check(kwargs, strict=strict) if plan else ([], [])

    def redact(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """:func:`redact` with the plan of ``kwargs["campaign_id"]``."""
        return redact(kwargs, self._plan_for(kwargs))


def discover_plan_files(folder: Path) -> list[Path]:
    """Plan files under a folder, sorted (the rule is in :meth:`PlanRegistry.load`)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [
            d for d in dirs if d not in _SKIP_DIRS and (not d.startswith(".") or d == ".clix")
        ]
        found.extend(Path(root, f) for f in files if f.endswith(PLAN_FILE_SUFFIX))
    return sorted(found)


def redact(kwargs: dict[str, Any], plan: TriggerPlan | None) -> dict[str, Any]:
    """A deep copy of ``kwargs`` with the value of every ``pii`` property replaced."""
    shown = copy.deepcopy(kwargs)
    props = shown.get("properties")
    if plan is not None and isinstance(props, dict):
        for name in plan.pii_keys & props.keys():
            props[name] = REDACTED
    return shown


def pii_like_keys(properties: dict[str, Any]) -> list[str]:
    """Keys that look like e-mail, phone or name fields, or hold an e-mail or phone value.

    Keys are matched in snake_case against :data:`PII_KEY_PATTERN` (``email``,
    ``phone_number``, ``customer_name``, ``first_name``, but not
    ``store_name``); string values are matched as an e-mail address, or as a
    phone number (7-15 digits, starting with ``+`` or with separators, and
    neither an ISO date nor an IPv4 address).
    """
    return [key for key, value in properties.items() if _pii_key(key) or _pii_value(value)]


def _pii_key(key: str) -> bool:
    return bool(PII_KEY_PATTERN.search(_snake(key)))


def _pii_value(value: object) -> bool:
    if not isinstance(value, str):
        return False
    text = value.strip()
    if _EMAIL_VALUE.fullmatch(text):
        return True
    if not _PHONE_VALUE.fullmatch(text) or _NOT_PHONE.fullmatch(text):
        return False
    digits = sum(c.isdigit() for c in text)
    return 7 <= digits <= 15 and (text.startswith("+") or not text.isdigit())


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
    ``pii`` properties (keys found by :func:`pii_like_keys`), whose values stay
    out of the file. ``properties`` adds ``NAME`` or ``NAME:TYPE`` entries
    (type ``string`` by default; a type given here wins over the sample's).
    Every property is required. The audience mode is ``audience_mode``, else
    the sample's (broadcast, targets or none), else ``default``; a targets
    plan without sample targets gets a placeholder target to edit.
    """
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
            if "example" in spec and not _matches(kind, spec["example"]):
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
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "datetime" if _ISO_DATE_START.fullmatch(value) and _is_datetime(value) else "string"
    raise ValueError(f"properties.{name}: {_kind(value)} has no plan type; send a primitive")


# --- helpers ------------------------------------------------------------------------------


def _matches(kind: str, value: object) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    return kind == "datetime" and isinstance(value, str) and _is_datetime(value)


def _mismatch(kind: str, value: object) -> str:
    expected = "datetime (an ISO-8601 string)" if kind == "datetime" else kind
    got = _kind(value)
    if kind == "datetime" and isinstance(value, str):
        got = "a string that is not ISO-8601"
    elif kind == "number" and isinstance(value, bool):
        got = "boolean (booleans are not numbers)"
    elif kind == "number" and isinstance(value, float):
        got = "a number that is not finite"
    return f"expected {expected}, got {got}"


def _is_datetime(text: str) -> bool:
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _snake(key: str) -> str:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return re.sub(r"[^A-Za-z0-9]+", "_", spaced).strip("_").lower()


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")
