"""The history of a trigger's attempts: the last few HTTP requests, kept in the ledger.

Each attempt is one short entry: ``number,at,status,latency_ms,worker[,error]``
with ``number`` the attempt's number across every delivery of the trigger,
``at`` the time in ms since the epoch in base 36 (8 characters), ``status``
the HTTP status or ``network``, ``error`` the kind of a network error (an
exception class name), ``worker`` the worker process's short id in the
fleet's register (``{p}:workers``: id -> host:pid, the last 10,000 kept);
entries are joined by ``;``, the last ``cap`` kept (``cap`` 0 keeps none).
Only ids and statuses, never property values or response bodies.

While the trigger is in flight (or dead-lettered) the history is field ``h``
of the scope's meta hash. The commit moves it into the done record, after the
trigger_id and a ``|``, with the successful attempt, in the same step (no round
trip of its own): a delivered trigger is remembered by that one string, and a
typical one, with one attempt (``1,miqzq0xl,200,87,2s``), costs about 20 bytes
more than without a history. A failed attempt is recorded by
:data:`RECORD_ATTEMPT`. Both are safe to repeat: an entry identical to the last
one (same number, same time) is not added twice.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

import redis

from config.keys import KeySpace, Scope, as_text
from tasks.dlq_entry import iso_time
from tasks.errors import ClixError

__all__ = [
    "HISTORY_APPEND_LUA",
    "RECORD_ATTEMPT",
    "Attempt",
    "AttemptHistory",
    "attempt_of",
    "parse",
    "resolve_workers",
    "worker_tag",
]

#: Field of the meta hash holding the history.
FIELD = "h"

#: Lua: ``history_join(history, entry, cap)`` is a history with one more entry,
#: the last ``cap`` kept ('' when ``cap`` is 0); an entry equal to the last one
#: (a repeated script) is not added again. ``history_append(meta, entry, cap)``
#: does it in a meta hash. Prepended to the scripts that record attempts (this
#: module's, and the ledger's commit, which moves the history with the
#: successful attempt into the done record).
HISTORY_APPEND_LUA = """
local function history_join(h, entry, cap)
  cap = tonumber(cap)
  if cap <= 0 then return '' end
  h = h or ''
  if entry ~= '' then
    if h == '' then
      h = entry
    elseif not (h == entry or string.sub(h, -(#entry + 1)) == ';' .. entry) then
      h = h .. ';' .. entry
    end
  end
  if h == '' then return '' end
  local n = 1
  for _ in string.gmatch(h, ';') do n = n + 1 end
  while n > cap do
    h = string.sub(h, string.find(h, ';', 1, true) + 1)
    n = n - 1
  end
  return h
end
local function history_append(meta, entry, cap)
  local h = history_join(redis.call('HGET', meta, 'h'), entry, cap)
  if h == '' then return 0 end
  redis.call('HSET', meta, 'h', h)
  return 1
end
"""

# KEYS: meta.  ARGV: entry, cap, ttl_s.  A failed attempt (the successful one
# is recorded by the commit, in its own step).
RECORD_ATTEMPT = (
    HISTORY_APPEND_LUA
    + """
local n = history_append(KEYS[1], ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return n
"""
)


def worker_tag() -> str:
    """Which worker made an attempt: short host name and process id."""
    return _tag(os.getpid())


@functools.lru_cache(maxsize=4)
def _tag(pid: int) -> str:
    return f"{socket.gethostname().split('.')[0][:24]}:{pid}"


#: Worker names kept in the fleet's register (the oldest go first).
WORKERS_KEPT = 10_000

# KEYS: worker sequence, worker register.  ARGV: name, kept.  A short id for a
# worker process (entries store it, not the name); the register keeps the last
# `kept` names, so it stays bounded however often workers restart.
_REGISTER = """
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[1])
if id > tonumber(ARGV[2]) then redis.call('HDEL', KEYS[2], id - tonumber(ARGV[2])) end
return id
"""


def _clean(text: str) -> str:
    # the separators of the encoding never appear inside a field
    return text.replace(",", " ").replace(";", " ")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt: its number, when, its status (or ``network``), latency, worker, error."""

    number: int
    at_ms: int
    status: str
    latency_ms: int
    worker: str
    error: str | None = None

    def encode(self) -> str:
        """The compact form stored in the ledger."""
        text = ",".join(
            (
                str(self.number),
                _base36(self.at_ms),
                _clean(self.status),
                str(self.latency_ms),
                _clean(self.worker),
                _clean(self.error or ""),
            )
        )
        return text.removesuffix(",")  # no error: no empty field

    @classmethod
    def decode(cls, text: str) -> Attempt:
        """Read one stored entry."""
        number, at, status, latency, worker, error = [*text.split(","), "", "", "", ""][:6]
        return cls(
            int(number), int(at or "0", 36), status, int(latency or 0), worker, error or None
        )

    def to_json(self) -> dict[str, Any]:
        """``{"attempt", "at", "status", "latency_ms", "error", "worker"}`` (``status --json``)."""
        status: int | str = int(self.status) if self.status.isdigit() else self.status
        return {
            "attempt": self.number,
            "at": iso_time(self.at_ms / 1000),
            "status": status,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "worker": self.worker,
        }


#: The exception class in a network error's message (tasks.errors.from_transport_error).
_NETWORK_KIND = re.compile(r"network error: (\w+)")


def attempt_of(
    number: int, error: ClixError | None, latency_ms: float, at_s: float, worker: str
) -> Attempt:
    """The history entry of one HTTP attempt: its status, or ``network`` and the error's kind."""
    status = getattr(error, "status_code", None)
    kind = None
    if error is not None and status is None:
        match = _NETWORK_KIND.match(str(error))
        kind = match.group(1) if match else type(error).__name__
    return Attempt(
        number=number,
        at_ms=int(at_s * 1000),
        status=str(status or (200 if error is None else "network")),
        latency_ms=round(latency_ms),
        worker=worker,
        error=kind,
    )


class AttemptHistory:
    """Record and read attempt histories. ``redis`` is the store's, injected."""

    def __init__(self, redis_client: redis.Redis, keys: KeySpace, *, cap: int, ttl_s: int) -> None:
        self.redis = redis_client
        self.keys = keys
        self.cap = cap
        self.ttl_s = ttl_s
        self._record = redis_client.register_script(RECORD_ATTEMPT)
        self._register = redis_client.register_script(_REGISTER)
        self._worker: tuple[int, str] | None = None  # (pid, short id)

    def register(self) -> None:
        """Take this worker process's short id in the fleet's register (at start-up).

        Best effort: until it succeeds, attempts name the worker in full
        (a few bytes more), and no attempt ever waits for the register.
        """
        if self.cap <= 0:
            return
        try:
            number = int(
                self._register(
                    keys=[self.keys.worker_seq, self.keys.workers],
                    args=[worker_tag(), WORKERS_KEPT],
                )
            )
        except redis.RedisError:
            return
        self._worker = (os.getpid(), _base36(number))

    def worker_id(self) -> str:
        """How attempts name this worker process: its short id, or its full name."""
        if self._worker is not None and self._worker[0] == os.getpid():
            return self._worker[1]
        return worker_tag()

    def resolve(self, attempts: list[Attempt]) -> list[Attempt]:
        """The attempts with worker ids replaced by the workers' names (one round trip)."""
        return resolve_workers(self.redis, self.keys, attempts)

    def record(self, scope: Scope, attempt: Attempt) -> None:
        """Append one failed attempt (nothing when the history is turned off)."""
        if self.cap > 0:
            self._record(
                keys=[self.keys.meta(scope)], args=[attempt.encode(), self.cap, self.ttl_s]
            )

    def read(self, scope: Scope) -> list[Attempt]:
        """The attempts remembered for a scope (in flight or dead), with the workers' names."""
        return self.resolve(parse(self.redis.hget(self.keys.meta(scope), FIELD)))


def parse(raw: object, *, done: bool = False) -> list[Attempt]:
    """Decode a stored history: a meta hash's ``h``, or a ``done`` record (after its ``|``)."""
    if not raw:
        return []
    text = as_text(raw)
    if done:  # trigger_id[|history]; records before 0.2 are JSON without one
        text = "" if text.startswith("{") else text.partition("|")[2]
    return [Attempt.decode(part) for part in text.split(";") if part]


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if number == 0:
            return text


def resolve_workers(conn: redis.Redis, keys: KeySpace, attempts: list[Attempt]) -> list[Attempt]:
    """Replace the short worker ids of ``attempts`` by the names in the fleet's register."""
    ids = sorted({a.worker for a in attempts if a.worker})
    if not ids:
        return attempts
    try:
        names = conn.hmget(keys.workers, [str(int(i, 36)) for i in ids])
    except ValueError:  # not ids (an entry written with a name)
        return attempts
    by_id = {i: as_text(n) for i, n in zip(ids, names, strict=True) if n is not None}
    return [dataclasses.replace(a, worker=by_id.get(a.worker, a.worker)) for a in attempts]
