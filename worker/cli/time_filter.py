"""Reading a point in time from the command line (``dlq ... --since / --until``,
``enqueue --at``) and a duration (``enqueue --in``).

Two forms are accepted:

* an age, meaning that long before now: a number and a unit, ``s``, ``m``,
  ``h``, ``d`` or ``w``, repeatable (``90s``, ``30m``, ``2h``, ``1h30m``,
  ``1.5h``, ``7d``), or ``now``;
* an ISO-8601 date or date-time (``2026-11-30``, ``2026-11-30T08:15:00Z``,
  ``2026-11-30T10:15+02:00``); one without a zone is read as UTC, like the
  times DLQ entries show.

:class:`TimeFilter` is the click parameter type: it turns the text into epoch
milliseconds (the DLQ index's unit) and makes a bad value a usage error
(exit 2).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

__all__ = ["TimeFilter", "parse_duration", "parse_instant"]

_UNITS_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_AGE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_AGE_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
if TYPE_CHECKING:
    _ParamType = click.ParamType[int]
else:  # click < 8.2 (allowed by pyproject) has no generic ParamType at run time
    _ParamType = click.ParamType

_ACCEPTED = "an age before now (30m, 2h, 7d, 1h30m) or an ISO-8601 time (2026-11-30T08:15:00Z)"


def parse_instant(text: str, now: datetime) -> datetime:
    """The aware UTC instant ``text`` names, ages counted back from ``now``.

    Raises ``ValueError`` naming the accepted forms.
    """
    value = text.strip().lower()
    if value == "now":
        return now
    if _AGE.fullmatch(value):
        seconds = sum(float(n) * _UNITS_S[unit] for n, unit in _AGE_PART.findall(value))
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not {_ACCEPTED}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``90s``, ``15m``, ``2h``, ``1h30m`` (``enqueue --in``).

    Raises ``ValueError`` naming the accepted form.
    """
    value = text.strip().lower()
    if not _AGE.fullmatch(value):
        raise ValueError(f"{text!r} is not a duration (90s, 15m, 2h, 1h30m)")
    return sum(float(n) * _UNITS_S[unit] for n, unit in _AGE_PART.findall(value))


class TimeFilter(_ParamType):
    """A click type for ``--since`` / ``--until``: the instant as epoch milliseconds."""

    name = "TIME"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Epoch ms of ``value``; a usage error (exit 2) when it cannot be read."""
        if isinstance(value, int):
            return value
        now = datetime.fromtimestamp(self._clock(), UTC)
        try:
            return int(parse_instant(str(value), now).timestamp() * 1000)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
