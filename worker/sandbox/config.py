"""What the sandbox accepts and how it misbehaves: :class:`SandboxConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FAULT_FIELDS", "LIVE_FIELDS", "SandboxConfig"]

FAULT_FIELDS = ("fail_rate", "drop_rate", "rate_429", "latency_ms", "rate_limit_per_s")
#: Fields ``POST /_sandbox/config`` may change while the server runs.
LIVE_FIELDS = frozenset(FAULT_FIELDS) | {"retry_after_s", "seed", "revoke_key"}


@dataclass
class SandboxConfig:
    """Credentials the sandbox accepts and the faults it injects.

    The three shares (drop, 429, 503) come from one random draw per request, so each
    is exactly its share of requests. ``latency_ms`` delays every trigger request,
    scripted ones too (a script's ``delay_ms`` adds to it); the control API is never
    delayed. ``seed`` makes the fault sequence reproducible.
    """

    project_id: str = "sandbox-project"
    api_key: str = field(default="sandbox-key", repr=False)  # repr=False: never shown
    fail_rate: float = 0.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_s: int = 1
    rate_limit_per_s: float = 0.0
    seed: int | None = None
    revoke_key: bool = False  # answer 401 to every trigger, as if the key were revoked

    def __post_init__(self) -> None:
        # Values also arrive as JSON from the control API, so check types, not just ranges.
        for name in FAULT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            if name not in ("latency_ms", "rate_limit_per_s") and value > 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if isinstance(self.retry_after_s, bool) or not isinstance(self.retry_after_s, int):
            raise ValueError("retry_after_s must be an integer")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError("seed must be an integer or null")
        if not isinstance(self.revoke_key, bool):
            raise ValueError("revoke_key must be a boolean")
        if not isinstance(self.project_id, str) or not isinstance(self.api_key, str):
            raise ValueError("project_id and api_key must be strings")

    def public(self) -> dict[str, Any]:
        """The configuration as JSON-ready data, without the API key."""
        data = asdict(self)
        del data["api_key"]
        return data
