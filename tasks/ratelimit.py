"""The fleet-wide rate limiter: GCRA in Redis, shared by every worker of a project.

Celery's ``rate_limit`` is per worker; Clix's limit (1,000 requests/s) is per
project. This limiter keeps one "theoretical arrival time" (TAT) per project in
Redis and hands out *reservations*: an atomic Lua script (clock: Redis
``TIME``, so hosts need not agree on the time) gives each request its own slot,
``1 / rate`` apart, allowing ``burst`` requests at once after a quiet spell.
The caller sleeps until its slot, without holding a Redis connection and
without polling, then sends. The ledger's claim takes the first slot of a
delivery in the same script (:data:`GCRA_RESERVE_LUA`, :meth:`RateLimiter.slot_request`),
so a delivery that sends once pays no round trip of its own for the limiter.
A slot further away than ``max_wait_s`` is not reserved: the caller sleeps
that bound and asks again, so no wait grows past the broker's visibility
timeout.

:meth:`RateLimiter.hold` pushes the whole fleet back for a while: used when
Clix answers 429 (``Retry-After``) or reports ``X-RateLimit-Remaining`` near
zero, so every worker slows down before Clix has to say no.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from tasks.errors import RateLimitWaitTooLong

__all__ = ["GCRA_RESERVE_LUA", "RateLimiter", "SlotRequest"]

# Both scripts take the time from Redis (TIME) so that hosts need not agree on it,
# unless the caller passes a clock reading (ARGV now_us > 0: tests).
_NOW = """
local now = tonumber(ARGV[#ARGV])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

#: The GCRA reservation as a Lua function, so that other scripts (the ledger's
#: claim) can take a slot in the same round trip. -> {reserved (1|0), wait_us}
GCRA_RESERVE_LUA = """
local function gcra_reserve(key, interval, tolerance, max_wait, now)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local wait = tat - tolerance - now
  if wait < 0 then wait = 0 end
  if wait > max_wait then return {0, wait} end
  local new_tat = tat + interval
  redis.call('SET', key, string.format('%d', new_tat),
             'PX', math.floor((new_tat - now) / 1000) + 1000)
  return {1, wait}
end
"""

# KEYS: tat.  ARGV: interval_us, tolerance_us, max_wait_us, now_us.  -> {reserved, wait_us}
_RESERVE = (
    _NOW
    + GCRA_RESERVE_LUA
    + """
return gcra_reserve(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), now)
"""
)

# KEYS: tat.  ARGV: hold_us, tolerance_us, now_us.  Nobody gets a slot before now + hold.
_HOLD = (
    _NOW
    + """
local target = now + tonumber(ARGV[1]) + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if target > tat then
  redis.call('SET', KEYS[1], string.format('%d', target),
             'PX', math.floor((target - now) / 1000) + 1000)
  return 1
end
return 0
"""
)


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """What another script needs to reserve a slot with :data:`GCRA_RESERVE_LUA`."""

    key: str
    interval_us: int
    tolerance_us: int
    max_wait_us: int
    now_us: int  # 0: Redis TIME


class RateLimiter:
    """Reservations of request slots at ``rate_per_s`` for one project, fleet-wide."""

    def __init__(
        self,
        redis_client: redis.Redis,
        key: str,
        *,
        rate_per_s: float,
        burst: int,
        max_wait_s: float = 5.0,
        give_up_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.key = key
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.interval_us = int(1_000_000 / rate_per_s)
        # GCRA tolerance: how far ahead of the TAT a request may go; burst-1 slots
        self.tolerance_us = self.interval_us * (burst - 1)
        self.max_wait_s = max_wait_s
        self.give_up_s = give_up_s
        self._sleep = sleep
        # None: Redis TIME, shared by every host (production); a function: tests
        self._clock = clock
        self._reserve = redis_client.register_script(_RESERVE)
        self._hold = redis_client.register_script(_HOLD)

    def acquire(
        self, on_wait: Callable[[], None] | None = None, *, within_s: float | None = None
    ) -> float:
        """Wait for this process's next slot; return the seconds waited.

        ``on_wait`` runs after each bounded wait for a slot that was too far
        ahead (the delivery renews its lease there). ``within_s`` bounds the
        whole wait (the delivery's deadline). Raises
        :class:`~tasks.errors.RateLimitWaitTooLong` when no slot comes within
        ``give_up_s`` or ``within_s``.
        """
        give_up_s = self.give_up_s if within_s is None else min(self.give_up_s, within_s)
        waited = 0.0
        while True:
            # never reserve a slot further away than the time left to wait
            max_wait_s = max(0.0, min(self.max_wait_s, give_up_s - waited))
            reserved, wait_us = self._reserve(
                keys=[self.key],
                args=[self.interval_us, self.tolerance_us, int(max_wait_s * 1e6), self._now_us()],
            )
            wait_s = int(wait_us) / 1_000_000
            if reserved:
                if wait_s > 0:
                    self._sleep(wait_s)
                return waited + wait_s
            if waited + self.max_wait_s > give_up_s:
                raise RateLimitWaitTooLong(
                    f"no request slot within {give_up_s:g} s (fleet limit {self.rate_per_s:g}/s)"
                )
            # too far ahead to reserve: wait the bound, then ask again
            self._sleep(self.max_wait_s)
            waited += self.max_wait_s
            if on_wait is not None:
                on_wait()

    def slot_request(self, within_s: float | None = None) -> SlotRequest:
        """A reservation another script makes for us (one round trip fewer)."""
        max_wait_s = self.max_wait_s if within_s is None else min(self.max_wait_s, within_s)
        return SlotRequest(
            self.key,
            self.interval_us,
            self.tolerance_us,
            int(max(0.0, max_wait_s) * 1_000_000),
            self._now_us(),
        )

    def wait_for(self, wait_us: int) -> float:
        """Sleep until a slot reserved elsewhere (:meth:`slot_request`); return the seconds."""
        wait_s = wait_us / 1_000_000
        if wait_s > 0:
            self._sleep(wait_s)
        return wait_s

    def hold(self, seconds: float) -> bool:
        """Give nobody a slot for ``seconds`` (fleet-wide); True if this moved the TAT."""
        return bool(
            self._hold(
                keys=[self.key],
                args=[int(seconds * 1_000_000), self.tolerance_us, self._now_us()],
            )
        )

    def _now_us(self) -> int:
        return 0 if self._clock is None else int(self._clock() * 1_000_000)
