"""The circuit breaker: stop the whole fleet when the failure is Clix's or ours, not the message's.

States (one per project, shared in Redis, clock: Redis ``TIME``)::

    closed --401/403------------------> open(auth)    probe every CLIX_AUTH_PROBE_S
    closed --the fleet's recent -------> open(outage)  probe every CLIX_BREAKER_PROBE_S
             requests mostly fail
    open   --probe time reached-------> half-open: one delivery fleet-wide holds
                                        the probe token and sends
    half-open --the probe succeeds----> closed
    half-open --the probe fails-------> open again (same reason)

Only the probe's own outcome moves an open breaker: a straggler that passed
the gate before the breaker opened neither closes it by succeeding (one lucky
request does not end an outage or an auth pause) nor postpones the next probe
by failing. A 401/403 still turns an outage into an auth pause.

"The fleet's recent requests": every worker process counts its outcomes and
adds them to a window in Redis, one bucket per second over the last
``window_s`` seconds. Failures are added at once (they are the slow path);
successes are batched in memory and added at most once per ``cache_s``, with
the breaker check a delivery makes anyway, so a healthy fleet pays no extra
round trip per trigger. The breaker opens when the window holds at least
``min_samples`` requests and ``failure_ratio`` of them failed: the whole
fleet's evidence, so an outage is seen after its first few failures, not after
each process collected its own.

:meth:`CircuitBreaker.systemic` answers the question a spent retry budget asks:
is the trouble the trigger's or the system's? While the breaker is open, or
``systemic_ratio`` of the fleet's *other* recent requests fail, it is the
system's, and the trigger waits in the queue instead of the dead-letter queue.
A trigger failing alone, with nothing else in the window, has no such evidence
and is dead-lettered when its budget is spent.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from config.keys import as_text

__all__ = ["BreakerState", "CircuitBreaker", "Outcome"]


class Outcome(enum.Enum):
    """What one request to Clix told us about the system."""

    OK = "ok"  # any answer that is not about the system: 2xx, 400, 404, 429...
    FAILURE = "failure"  # 5xx, network error
    AUTH = "auth"  # 401 / 403


# Both scripts read the time from Redis (TIME) unless the caller passes one (tests).
_NOW = """
local now = tonumber(ARGV[#ARGV])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: state hash, window hash.
# ARGV: event ('ok'|'failure'|'auth'|'flush'), ok_count, fail_count, owner, probe_ms,
#       auth_probe_ms, window_s, min_samples, failure_ratio, now_ms
# -> {transition ('opened'|'closed'|'reopened'|''), state ('closed'|'open'), oks, fails}
_RECORD = (
    _NOW
    + """
local sec = math.floor(now / 1000)
local window = tonumber(ARGV[7])
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[2], sec .. ':ok', ARGV[2]) end
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[2], sec .. ':fail', ARGV[3]) end
local stale = {}
for s = sec - window - 10, sec - window do
  table.insert(stale, s .. ':ok')
  table.insert(stale, s .. ':fail')
end
redis.call('HDEL', KEYS[2], unpack(stale))
redis.call('EXPIRE', KEYS[2], window + 10)
local fields = {}
for s = sec - window + 1, sec do
  table.insert(fields, s .. ':ok')
  table.insert(fields, s .. ':fail')
end
local counts = redis.call('HMGET', KEYS[2], unpack(fields))
local oks, fails = 0, 0
for i = 1, #counts, 2 do
  oks = oks + tonumber(counts[i] or 0)
  fails = fails + tonumber(counts[i + 1] or 0)
end

local state = redis.call('HGET', KEYS[1], 'state')
local event = ARGV[1]
local is_probe = state and redis.call('HGET', KEYS[1], 'probe_owner') == ARGV[4]
local function open(reason, transition)
  local after = tonumber(ARGV[5])
  if reason == 'auth' then after = tonumber(ARGV[6]) end
  redis.call('HSET', KEYS[1], 'state', 'open', 'reason', reason, 'probe_at', now + after)
  redis.call('HSETNX', KEYS[1], 'opened_at', now)
  redis.call('HDEL', KEYS[1], 'probe_owner', 'probe_until')
  return {transition, 'open', oks, fails}
end
if event == 'auth' then
  if not state then return open('auth', 'opened') end
  if is_probe or redis.call('HGET', KEYS[1], 'reason') ~= 'auth' then
    return open('auth', 'reopened')
  end
elseif state and is_probe then
  if event == 'ok' then
    -- the outage is over: judge the requests from now on
    redis.call('DEL', KEYS[1], KEYS[2])
    return {'closed', 'closed', 0, 0}
  end
  if event == 'failure' then return open(redis.call('HGET', KEYS[1], 'reason'), 'reopened') end
elseif not state and event == 'failure' then
  local samples = oks + fails
  if samples >= tonumber(ARGV[8]) and fails >= samples * tonumber(ARGV[9]) then
    return open('outage', 'opened')
  end
end
if state then return {'', 'open', oks, fails} end
return {'', 'closed', oks, fails}
"""
)

# KEYS: state hash.  ARGV: owner, probe_timeout_ms, now_ms
# -> {'closed'|'open'|'probe'|'wait', reason, ms until probe}
_ALLOW = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'closed', '', 0} end
local reason = redis.call('HGET', KEYS[1], 'reason') or ''
local probe_at = tonumber(redis.call('HGET', KEYS[1], 'probe_at') or now)
if now < probe_at then return {'open', reason, probe_at - now} end
local owner = redis.call('HGET', KEYS[1], 'probe_owner')
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or 0)
if owner and owner ~= ARGV[1] and now < until_ms then return {'wait', reason, until_ms - now} end
redis.call('HSET', KEYS[1], 'probe_owner', ARGV[1], 'probe_until', now + tonumber(ARGV[2]))
return {'probe', reason, 0}
"""
)


@dataclass(frozen=True, slots=True)
class BreakerState:
    """The breaker as an operator sees it."""

    state: str  # "closed" | "open" | "half_open"
    reason: str | None = None  # "auth" | "outage"
    opened_at_ms: int | None = None
    probe_in_s: float | None = None

    @property
    def consuming(self) -> bool:
        """Whether workers should take messages (closed, or a probe may go out)."""
        return self.state != "open"


class CircuitBreaker:
    """Fleet-wide breaker for one project: state and the failure window in Redis."""

    def __init__(
        self,
        redis_client: redis.Redis,
        state_key: str,
        *,
        window_key: str | None = None,
        window_s: float = 10.0,
        min_samples: int = 10,
        failure_ratio: float = 0.8,
        systemic_ratio: float = 0.5,
        probe_s: float = 5.0,
        auth_probe_s: float = 30.0,
        probe_timeout_s: float = 15.0,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        redis_clock: Callable[[], float] | None = None,
    ) -> None:
        self.redis = redis_client
        self.state_key = state_key
        self.window_key = window_key or f"{state_key}:window"
        self.window_s = max(1, round(window_s))
        self.min_samples = min_samples
        self.failure_ratio = failure_ratio
        self.systemic_ratio = systemic_ratio
        self.probe_ms = int(probe_s * 1000)
        self.auth_probe_ms = int(auth_probe_s * 1000)
        self.probe_timeout_ms = int(probe_timeout_s * 1000)
        self.cache_s = cache_s
        self._clock = clock  # times the local cache only
        # None: Redis TIME, shared by every host (production); a function: tests
        self._redis_clock = redis_clock
        self._closed_until = 0.0  # local cache: "closed" was seen until this time
        self._unsent_ok = 0  # successes not yet added to the fleet's window
        self._record = redis_client.register_script(_RECORD)
        self._allow = redis_client.register_script(_ALLOW)

    def allow(self, owner: str) -> tuple[bool, str]:
        """May this delivery send now? ``(True, "probe")`` makes it the half-open probe.

        A "closed" answer is trusted for ``cache_s``: a worker notices an opened
        breaker within that time, and a healthy fleet asks Redis (and adds its
        batched successes to the window) once a second per process.
        """
        if self._clock() < self._closed_until:
            return True, "closed"
        if self._unsent_ok:
            self._send("flush", owner)
        verdict_raw, reason, _ = self._allow(
            keys=[self.state_key], args=[owner, self.probe_timeout_ms, self._now_ms()]
        )
        verdict = as_text(verdict_raw)
        if verdict == "closed":
            self._closed_until = self._clock() + self.cache_s
        return verdict in ("closed", "probe"), verdict if verdict != "open" else as_text(reason)

    def record(self, outcome: Outcome, owner: str = "", *, probe: bool = False) -> str:
        """Record one request's outcome; return the transition it caused ('' for none).

        ``probe``: the request was the half-open probe (``owner`` holds the token),
        whose outcome alone closes or reopens an open breaker.
        """
        if outcome is Outcome.OK and not probe:
            self._unsent_ok += 1
            return ""
        return self._send(outcome.value, owner)

    def systemic(self, own_failures: int = 0) -> bool:
        """Is the fleet failing, not just the caller's trigger?

        True while the breaker is open, or when the window's requests other than
        the caller's own ``own_failures`` mostly failed. With no other requests
        in the window there is no evidence of an outage: False.
        """
        _, state, oks, fails = self._call("flush", "")
        others_failed = max(0, fails - own_failures)
        others = oks + others_failed
        return state == "open" or (others > 0 and others_failed >= others * self.systemic_ratio)

    def _send(self, event: str, owner: str) -> str:
        transition, state, _, _ = self._call(event, owner)
        if event != "ok" or state == "open":
            self._closed_until = 0.0  # a failure: ask Redis before the next request
        if transition == "closed":
            self._closed_until = self._clock() + self.cache_s
        return transition

    def _call(self, event: str, owner: str) -> tuple[str, str, int, int]:
        oks, self._unsent_ok = self._unsent_ok, 0
        fails = 1 if event in ("failure", "auth") else 0
        try:
            reply = self._record(
                keys=[self.state_key, self.window_key],
                args=[
                    event,
                    oks,
                    fails,
                    owner,
                    self.probe_ms,
                    self.auth_probe_ms,
                    self.window_s,
                    self.min_samples,
                    self.failure_ratio,
                    self._now_ms(),
                ],
            )
        except Exception:
            self._unsent_ok += oks  # keep them for the next flush
            raise
        transition, state, ok_total, fail_total = reply
        return as_text(transition), as_text(state), int(ok_total), int(fail_total)

    def _now_ms(self) -> int:
        return 0 if self._redis_clock is None else int(self._redis_clock() * 1000)

    def state(self) -> BreakerState:
        """Current state, without side effects."""
        raw = self.redis.hgetall(self.state_key)
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        if not fields.get("state"):
            return BreakerState("closed")
        # the store's clock, asked only for an open breaker (a cluster pipeline refuses TIME)
        now_ms = self._now_ms()
        if self._redis_clock is None:
            seconds, micros = self.redis.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        probe_at = int(fields.get("probe_at", now_ms))
        return BreakerState(
            "open" if now_ms < probe_at else "half_open",
            fields.get("reason"),
            int(fields["opened_at"]) if "opened_at" in fields else None,
            max(0.0, (probe_at - now_ms) / 1000),
        )
