"""What Clix's answers say about the project's rate limit.

A 429 carries ``Retry-After`` (seconds); every answer may carry Clix's
``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` and a ``Date``. The
attempt hooks pass the :class:`Quota` of each answer to the fleet's limiter
(:mod:`tasks.feedback`); :func:`retry_after_s` is what a 429 asks us to wait
(:mod:`tasks.errors` puts it on :class:`~tasks.errors.RateLimited`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

__all__ = ["Quota", "retry_after_s"]


def retry_after_s(response: httpx.Response) -> float | None:
    """How long a 429 asks us to wait: ``Retry-After`` in seconds, else the quota's reset."""
    value = response.headers.get("retry-after")
    try:
        if value is not None:
            return max(0.0, float(value))
    except ValueError:
        pass  # an HTTP date; Clix sends seconds: fall back to X-RateLimit-Reset
    quota = Quota.from_headers(response.headers)
    return None if quota is None else quota.reset_in_s(time.time())


@dataclass(frozen=True, slots=True)
class Quota:
    """Clix's ``X-RateLimit-*`` headers: the project's budget as Clix sees it.

    ``X-RateLimit-Reset`` is a time on Clix's clock; ``server_now_s`` is that
    clock's reading from the answer's ``Date`` header, so "how long until the
    reset" is measured on one clock and a host whose clock is off cannot hold
    the fleet back (or let it run early).
    """

    limit: int | None
    remaining: int | None
    reset_at_s: float | None  # unix seconds, Clix's clock
    server_now_s: float | None = None  # Clix's clock when it answered (Date header)

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> Quota | None:
        """Parse the headers; ``None`` when Clix sent none."""
        values = [headers.get(f"x-ratelimit-{n}") for n in ("limit", "remaining", "reset")]
        if all(v is None for v in values):
            return None
        limit, remaining, reset = (_number(v) for v in values)
        return cls(
            None if limit is None else int(limit),
            None if remaining is None else int(remaining),
            reset,
            _http_date(headers.get("date")),
        )

    def reset_in_s(self, local_now_s: float) -> float | None:
        """Seconds until the quota resets, measured on Clix's clock when it said the time."""
        if self.reset_at_s is None:
            return None
        now = self.server_now_s if self.server_now_s is not None else local_now_s
        return max(0.0, self.reset_at_s - now)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None
