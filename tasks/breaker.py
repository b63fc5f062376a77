"""The circuit breaker: stop the whole fleet when the failure is Clix's or ours, not the message's.

States (one per project, shared in Redis, clock: Redis ``TIME``)::

    closed --401/403------------------> open(auth)    probe every CLIX_AUTH_PROBE_S
    closed --most recent requests fail-> open(outage)  probe every CLIX_BREAKER_PROBE_S
    open   --probe time reached-------> half-open: one delivery fleet-wide holds
                                        the probe token and sends
    half-open --probe succeeds--------> closed
    half-open --probe fails-----------> open again (same reason)

"Most recent requests fail": each worker process keeps the outcomes of its
last ``window`` requests in memory (recording a success in Redis would cost a
round trip per trigger); when at least ``min_samples`` are recorded and
``failure_ratio`` of them are 5xx or network errors, it opens the shared
breaker. One bad trigger alone cannot: it spends at most ``CLIX_MAX_ATTEMPTS``
(default 5) failures, under the default ``min_samples`` of 10.

While the breaker is open a delivery does not send (:meth:`CircuitBreaker.allow`
says no, the message goes back to the queue uncounted) and every worker stops
consuming (``worker.consumption``), so messages wait in the broker untouched:
not retried in a loop, not dead-lettered. During a full outage the fleet sends
at most one probe per probe interval once the breaker is open.
"""

from __future__ import annotations

import enum
import time
from collections import deque
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


# KEYS: state hash.  ARGV: event ('ok'|'auth'|'storm'|'failure'), probe_ms, auth_probe_ms
# -> transition: 'opened', 'closed', 'reopened' or ''
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state')
local event = ARGV[1]
local function open(reason, transition)
  local after = tonumber(ARGV[2])
  if reason == 'auth' then after = tonumber(ARGV[3]) end
  redis.call('HSET', KEYS[1], 'state', 'open', 'reason', reason, 'probe_at', now + after)
  redis.call('HSETNX', KEYS[1], 'opened_at', now)
  redis.call('HDEL', KEYS[1], 'probe_owner', 'probe_until')
  return transition
end
if event == 'ok' then
  if state then redis.call('DEL', KEYS[1]) return 'closed' end
  return ''
end
if event == 'auth' then
  if state then return open('auth', 'reopened') end
  return open('auth', 'opened')
end
if not state then
  if event == 'storm' then return open('outage', 'opened') end
  return ''
end
-- a failure while open or half-open: the probe (or a straggler) failed
return open(redis.call('HGET', KEYS[1], 'reason') or 'outage', 'reopened')
"""

# KEYS: state hash.  ARGV: owner, probe_timeout_ms
# -> {'closed'|'open'|'probe'|'wait', reason, ms until probe}
_ALLOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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
    """Fleet-wide breaker for one project; state in Redis, the failure window per process."""

    def __init__(
        self,
        redis_client: redis.Redis,
        state_key: str,
        *,
        window: int = 20,
        min_samples: int = 10,
        failure_ratio: float = 0.8,
        probe_s: float = 5.0,
        auth_probe_s: float = 30.0,
        probe_timeout_s: float = 15.0,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis_client
        self.state_key = state_key
        self.min_samples = min_samples
        self.failure_ratio = failure_ratio
        self.probe_ms = int(probe_s * 1000)
        self.auth_probe_ms = int(auth_probe_s * 1000)
        self.probe_timeout_ms = int(probe_timeout_s * 1000)
        self.cache_s = cache_s
        self._clock = clock
        self._recent: deque[bool] = deque(maxlen=window)  # True: the request failed
        self._closed_until = 0.0  # local cache: "closed" was seen until this time
        self._record = redis_client.register_script(_RECORD)
        self._allow = redis_client.register_script(_ALLOW)

    def allow(self, owner: str) -> tuple[bool, str]:
        """May this delivery send now? ``(True, "probe")`` makes it the half-open probe.

        A "closed" answer is trusted for ``cache_s``: a worker notices an opened
        breaker within that time, and a healthy fleet asks Redis once a second.
        """
        if self._clock() < self._closed_until:
            return True, "closed"
        verdict_raw, reason, _ = self._allow(
            keys=[self.state_key], args=[owner, self.probe_timeout_ms]
        )
        verdict = as_text(verdict_raw)
        if verdict == "closed":
            self._closed_until = self._clock() + self.cache_s
        return verdict in ("closed", "probe"), verdict if verdict != "open" else as_text(reason)

    def record(self, outcome: Outcome) -> str:
        """Record one request's outcome; return the transition it caused ('' for none)."""
        if outcome is Outcome.OK:
            self._recent.append(False)
            if self._clock() < self._closed_until:
                return ""  # closed, as far as we know: nothing to tell the fleet
            return self._send("ok")
        if outcome is Outcome.AUTH:
            return self._send("auth")
        self._recent.append(True)
        samples = len(self._recent)
        storm = samples >= self.min_samples and sum(self._recent) / samples >= self.failure_ratio
        if self._clock() < self._closed_until and not storm:
            return ""
        return self._send("storm" if storm else "failure")

    def _send(self, event: str) -> str:
        transition = as_text(
            self._record(keys=[self.state_key], args=[event, self.probe_ms, self.auth_probe_ms])
        )
        if transition:
            self._closed_until = 0.0
            self._recent.clear()
        if transition == "closed":
            self._closed_until = self._clock() + self.cache_s
        return transition

    def state(self) -> BreakerState:
        """Current state, without side effects."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.state_key)
        pipe.time()
        raw, (seconds, micros) = pipe.execute()
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        if not fields.get("state"):
            return BreakerState("closed")
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        probe_at = int(fields.get("probe_at", now_ms))
        return BreakerState(
            "open" if now_ms < probe_at else "half_open",
            fields.get("reason"),
            int(fields["opened_at"]) if "opened_at" in fields else None,
            max(0.0, (probe_at - now_ms) / 1000),
        )
