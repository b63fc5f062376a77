"""How the sandbox misbehaves: random faults, Clix's rate limit, scripted answers.

:class:`Faults` holds the live :class:`~worker.sandbox.config.SandboxConfig`
(changed in place, so every holder of it sees a change), the fault RNG, the
token bucket and the per-campaign scripts.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import time
import uuid
from dataclasses import fields, replace
from typing import Any

from .config import SandboxConfig
from .http11 import Answer, error

__all__ = ["Faults", "TokenBucket", "script_problem"]


class TokenBucket:
    """Clix's limiter: ``rate`` tokens/s, burst ``max(rate, 1)``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> tuple[bool, dict[str, str]]:
        """Take a token if there is one; the ``X-RateLimit-*`` (and ``Retry-After``) headers."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        ok = self.tokens >= 1.0
        if ok:
            self.tokens -= 1.0
        full_in = (self.capacity - self.tokens) / self.rate
        headers = {
            "X-RateLimit-Limit": f"{self.rate:g}",
            "X-RateLimit-Remaining": str(int(self.tokens)),
            "X-RateLimit-Reset": str(math.ceil(time.time() + full_in)),
        }
        if not ok:
            headers["Retry-After"] = str(max(1, math.ceil((1.0 - self.tokens) / self.rate)))
        return ok, headers


class Faults:
    """The faults of one server, driven by its config and the control API."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.initial = replace(config)  # what a reset goes back to
        self.scripts: dict[str, collections.deque[dict[str, Any]]] = {}
        self.rng = random.Random(config.seed)
        self.bucket = TokenBucket(config.rate_limit_per_s) if config.rate_limit_per_s else None

    def pop_script(self, campaign_id: str) -> dict[str, Any] | None:
        """The next scripted answer of a campaign, if one is queued."""
        script = self.scripts.get(campaign_id)
        return script.popleft() if script else None

    def queue_script(self, campaign_id: str, responses: list[dict[str, Any]]) -> None:
        """Append checked script entries to a campaign's queue."""
        self.scripts.setdefault(campaign_id, collections.deque()).extend(responses)

    def random_fault(self) -> tuple[bool, Answer | None]:
        """``(True, answer)`` when this request draws a fault (``None``: drop it), else False."""
        config = self.config
        faults = config.drop_rate + config.rate_429 + config.fail_rate
        if faults:  # one draw, so each rate is exactly its share of requests
            draw = self.rng.random()
            if draw < config.drop_rate:
                return True, None
            if draw < config.drop_rate + config.rate_429:
                headers = {"Retry-After": str(config.retry_after_s)}
                return True, (429, {"error": "rate limited"}, headers)
            if draw < faults:
                return True, error(503)
        return False, None

    async def scripted(self, entry: dict[str, Any]) -> Answer | None:
        """Play one script entry (after its ``delay_ms``); ``None`` means drop."""
        if entry.get("delay_ms"):
            await asyncio.sleep(entry["delay_ms"] / 1000)
        if entry.get("action") == "drop":
            return None
        status: int = entry.get("status", 200)
        headers = dict(entry.get("headers", {}))
        if status == 429 and not any(k.lower() == "retry-after" for k in headers):
            headers["Retry-After"] = str(self.config.retry_after_s)
        if "body" in entry:
            return status, entry["body"], headers
        if status == 200:
            return 200, {"trigger_id": str(uuid.uuid4())}, headers
        return status, error(status)[1], headers

    def apply(self, new: SandboxConfig, fresh: bool = False) -> None:
        """Copy ``new`` into the live config (in place, so holders of it see the change).

        The bucket and the fault RNG restart only when their settings change (or on
        reset), so toggling fail_rate mid-test does not refill the rate limit.
        """
        old = replace(self.config)
        for f in fields(SandboxConfig):
            setattr(self.config, f.name, getattr(new, f.name))
        if fresh or new.rate_limit_per_s != old.rate_limit_per_s:
            rate = new.rate_limit_per_s
            self.bucket = TokenBucket(rate) if rate else None
        if fresh or new.seed != old.seed:
            self.rng = random.Random(new.seed)

    def reset(self) -> None:
        """Forget every script and go back to the start-up configuration."""
        self.scripts.clear()
        self.apply(replace(self.initial), fresh=True)


def script_problem(entry: Any) -> str | None:
    """What is wrong with one script entry, or None."""
    if not isinstance(entry, dict):
        return "each response must be an object"
    if entry.get("action", "drop") != "drop":
        return "the only action is drop"
    status = entry.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        return "status must be an HTTP status code"
    delay = entry.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        return "delay_ms must be a non-negative number"
    headers = entry.get("headers", {})
    if not isinstance(headers, dict):
        return "headers must be an object"
    for name, value in headers.items():
        text = f"{name}{value}" if isinstance(value, str) else "\n"
        if "\r" in text or "\n" in text or ":" in name or not text.isascii():
            return f"invalid header {name!r}"
        if name.lower() in ("content-length", "content-type", "connection", "transfer-encoding"):
            return f"header {name} is set by the sandbox"
    return None
