"""The history of a trigger's attempts: the last few HTTP requests, kept in the ledger.

Each attempt is one short entry in field ``h`` of the scope's meta hash (which
lives as long as the key is remembered): ``at_ms,status,latency_ms,worker,error``
with ``status`` the HTTP status or ``network``, ``error`` the kind of a network
error (an exception class name) or empty, and entries joined by ``;``. Only ids
and statuses, never property values or response bodies. A typical trigger has
one attempt: about 40 bytes. At most ``cap`` entries are kept (the newest);
``cap`` 0 keeps none.

Recording is one small script per attempt (:data:`RECORD_ATTEMPT`), safe to
repeat: an entry identical to the last one is not added twice.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import redis

from config.keys import KeySpace, Scope, as_text
from tasks.dlq_entry import iso_time

__all__ = ["RECORD_ATTEMPT", "Attempt", "AttemptHistory", "worker_tag"]

#: Field of the meta hash holding the history.
FIELD = "h"

# KEYS: meta.  ARGV: entry, cap, ttl_s.  Appends, keeps the last `cap` entries.
RECORD_ATTEMPT = """
local h = redis.call('HGET', KEYS[1], 'h')
if h then
  if h == ARGV[1] or string.sub(h, -(#ARGV[1] + 1)) == ';' .. ARGV[1] then return 0 end
  h = h .. ';' .. ARGV[1]
else
  h = ARGV[1]
end
local n = 1
for _ in string.gmatch(h, ';') do n = n + 1 end
while n > tonumber(ARGV[2]) do
  h = string.sub(h, string.find(h, ';', 1, true) + 1)
  n = n - 1
end
redis.call('HSET', KEYS[1], 'h', h)
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return n
"""


def worker_tag() -> str:
    """Which worker made an attempt: short host name and process id."""
    return f"{socket.gethostname().split('.')[0][:24]}:{os.getpid()}"


def _clean(text: str) -> str:
    # the separators of the encoding never appear inside a field
    return text.replace(",", " ").replace(";", " ")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt: when, its status (or ``network``), latency, worker, error kind."""

    at_ms: int
    status: str
    latency_ms: int
    worker: str
    error: str | None = None

    def encode(self) -> str:
        """The compact form stored in the ledger."""
        return ",".join(
            (
                str(self.at_ms),
                _clean(self.status),
                str(self.latency_ms),
                _clean(self.worker),
                _clean(self.error or ""),
            )
        )

    @classmethod
    def decode(cls, text: str) -> Attempt:
        """Read one stored entry."""
        at, status, latency, worker, error = [*text.split(","), "", "", "", ""][:5]
        return cls(int(at), status, int(latency or 0), worker, error or None)

    def to_json(self) -> dict[str, Any]:
        """``{"at", "status", "latency_ms", "error", "worker"}`` as ``status --json`` shows it."""
        status: int | str = int(self.status) if self.status.isdigit() else self.status
        return {
            "at": iso_time(self.at_ms / 1000),
            "status": status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "worker": self.worker,
        }


class AttemptHistory:
    """Record and read attempt histories. ``redis`` is the store's, injected."""

    def __init__(self, redis_client: redis.Redis, keys: KeySpace, *, cap: int, ttl_s: int) -> None:
        self.redis = redis_client
        self.keys = keys
        self.cap = cap
        self.ttl_s = ttl_s
        self._record = redis_client.register_script(RECORD_ATTEMPT)

    def record(self, scope: Scope, attempt: Attempt) -> None:
        """Append one attempt (nothing when the history is turned off)."""
        if self.cap > 0:
            self._record(
                keys=[self.keys.meta(scope)], args=[attempt.encode(), self.cap, self.ttl_s]
            )

    def read(self, scope: Scope) -> list[Attempt]:
        """The attempts remembered for a scope, oldest first."""
        raw = self.redis.hget(self.keys.meta(scope), FIELD)
        return parse(raw)


def parse(raw: object) -> list[Attempt]:
    """Decode a stored history (``None`` or empty: no attempts)."""
    if not raw:
        return []
    return [Attempt.decode(part) for part in as_text(raw).split(";") if part]
