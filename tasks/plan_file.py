"""Reading a trigger plan file: strict JSON, so what a plan's author wrote is what is checked.

The file is UTF-8 (a byte-order mark is allowed); ``NaN`` and ``Infinity`` are
not JSON numbers; an object that gives a key twice remembers it, so the rules
(:mod:`tasks.plan_rules`) can report it instead of silently keeping the last.
Every failure to read is one :class:`~tasks.plan_rules.Problem` at ``$``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.plan_rules import Problem, validate_plan_data

__all__ = ["read_plan_json", "validate_plan_file"]


def validate_plan_file(path: Path) -> list[Problem]:
    """Validate one plan file; bad JSON is one problem at ``$``. Raises ``OSError``."""
    data, problems = read_plan_json(path)
    return problems or validate_plan_data(data)


def read_plan_json(path: Path) -> tuple[object, list[Problem]]:
    """The parsed plan, or ``None`` and the problem that stopped reading. Raises ``OSError``."""
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
