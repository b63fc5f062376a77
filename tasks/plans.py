"""Loaded trigger plans, and checking triggers against them.

A :class:`TriggerPlan` is a valid plan file (the format and its rules are in
:mod:`tasks.plan_rules`), parsed. :class:`PlanRegistry` loads the plans named
by ``CLIX_PLANS``, one per campaign, and checks triggers against them
(:meth:`TriggerPlan.check`); :meth:`PlanRegistry.redact` hides the values of
a campaign's ``pii`` properties with :func:`tasks.pii.redact`. Messages about
a trigger name the field but never echo a value, so they are safe to log.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import InvalidTrigger
from tasks.pii import pii_like_keys, redact
from tasks.plan_file import read_plan_json
from tasks.plan_rules import (
    PLAN_FILE_SUFFIX,
    PlanError,
    PropertySpec,
    validate_plan_data,
)
from tasks.plan_values import json_path, kind_of, matches_type, snake_case, type_mismatch

__all__ = ["PlanRegistry", "TriggerPlan", "check_contract", "discover_plan_files"]

logger = logging.getLogger("clix.plans")

_SKIP_DIRS = frozenset({"node_modules", "__pycache__", "venv"})


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
        data, problems = read_plan_json(path)
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
            return [*errors, f"properties: expected an object, got {kind_of(props)}"], warnings
        for name, spec in self.properties.items():
            where = json_path("properties", name)
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
            if not matches_type(spec.type, props[name]):
                errors.append(f"{where}: {type_mismatch(spec.type, props[name])}")
        for name in props:
            if name not in self.properties:
                guess = snake_case(name) if snake_case(name) in self.properties else None
                guess = guess or next(
                    iter(difflib.get_close_matches(name, self.properties, 1)), None
                )
                hint = f"; did you mean {guess!r}?" if guess else ""
                message = f"{json_path('properties', name)}: not declared in {plan}{hint}"
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
        A file is read whatever its name. A folder is searched recursively and
        every ``*.json`` file in it is a plan (``.clix/api-trigger-plan.json``,
        ``store_pickup.json``, ``welcome.json``), skipping hidden folders other
        than ``.clix``, ``node_modules``,
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
        """:func:`tasks.pii.redact` with the ``pii`` keys of ``kwargs["campaign_id"]``'s plan."""
        plan = self._plan_for(kwargs)
        return redact(kwargs, plan.pii_keys if plan else ())


def discover_plan_files(folder: Path) -> list[Path]:
    """Plan files under a folder, sorted (the rule is in :meth:`PlanRegistry.load`)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [
            d for d in dirs if d not in _SKIP_DIRS and (not d.startswith(".") or d == ".clix")
        ]
        found.extend(Path(root, f) for f in files if f.endswith(PLAN_FILE_SUFFIX))
    return sorted(found)


def check_contract(
    kwargs: dict[str, Any], registry: PlanRegistry, *, strict: bool, pii_warning: bool = False
) -> None:
    """Check a valid trigger against its campaign's plan; raise :class:`InvalidTrigger`.

    Warnings (undeclared properties outside strict mode; with ``pii_warning``,
    PII-looking keys of a campaign without a plan) are logged, never raised.
    """
    errors, warnings = registry.check(kwargs, strict=strict)
    if errors:
        raise InvalidTrigger(errors)
    campaign_id = kwargs["campaign_id"]
    for warning in warnings:
        logger.warning("trigger for campaign %s: %s", campaign_id, warning)
    properties = kwargs.get("properties")
    if pii_warning and properties and campaign_id not in registry:
        suspicious = pii_like_keys(properties)
        if suspicious:
            logger.warning(
                "trigger for campaign %s carries properties that look like personal data "
                "(%s) and the campaign has no plan marking them pii: they will show in the "
                "DLQ; add a plan (CLIX_PLANS) or set CLIX_PII_WARNING=false",
                campaign_id,
                ", ".join(suspicious),
            )
