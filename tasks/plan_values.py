"""Values against a plan's property types: matching, describing and locating them.

Shared by the plan format's validation (:mod:`tasks.plan_rules`), the checking
of triggers against loaded plans (:mod:`tasks.plans`), the PII heuristics
(:mod:`tasks.pii`) and ``clix-worker plan``. A plan type is one of
``string | number | boolean | datetime``; booleans are not numbers, numbers
must be finite, and a datetime is an ISO-8601 string.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import datetime

__all__ = [
    "is_control",
    "is_datetime",
    "json_path",
    "kind_of",
    "matches_type",
    "shown_value",
    "snake_case",
    "type_mismatch",
]


def matches_type(kind: str, value: object) -> bool:
    """Whether ``value`` is of the plan type ``kind`` (booleans are not numbers)."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    return kind == "datetime" and isinstance(value, str) and is_datetime(value)


def type_mismatch(kind: str, value: object) -> str:
    """Why ``value`` is not of the plan type ``kind``, for a problem's message."""
    expected = "datetime (an ISO-8601 string)" if kind == "datetime" else kind
    got = kind_of(value)
    if kind == "datetime" and isinstance(value, str):
        got = "a string that is not ISO-8601"
    elif kind == "number" and isinstance(value, bool):
        got = "boolean (booleans are not numbers)"
    elif kind == "number" and isinstance(value, float):
        got = "a number that is not finite"
    return f"expected {expected}, got {got}"


def is_datetime(text: str) -> bool:
    """Whether ``text`` is an ISO-8601 date or time (``Z`` allowed)."""
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def kind_of(value: object) -> str:
    """The JSON kind of a value: ``null``, ``boolean``, ``number``, ``string``..."""
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


def shown_value(value: object) -> str:
    """A value as a message shows it: JSON, cut at 40 characters."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def snake_case(key: str) -> str:
    """A key as snake_case would spell it (``storeLocation`` -> ``store_location``)."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return re.sub(r"[^A-Za-z0-9]+", "_", spaced).strip("_").lower()


def json_path(path: str, key: str | int) -> str:
    """The JSON path of ``key`` (or index) below ``path``: ``$.a``, ``$[0]``, ``$["a b"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def is_control(char: str) -> bool:
    """Whether a character is a control, format or line/paragraph separator."""
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")
