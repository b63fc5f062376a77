"""The store's clock as one process sees it, without a round trip per reading.

Pending records and the reconciler judge time by the store's clock (Redis
``TIME``), never by the host's, so hosts need not agree on the time. A
producer that stamps a record in the same script that pushes its message must
know the stamp before it sends anything. Reading ``TIME`` first would bring
back the round trip the script saves. So :class:`StoreClock` reads ``TIME``
once per :data:`RESYNC_S` and adds the time elapsed since on the host's
*monotonic* clock. A host whose wall clock is minutes off, or is stepped by
NTP, stamps exactly as one that is right. The error is half a round trip plus
the monotonic clock's drift over :data:`RESYNC_S`: well under a millisecond,
against grace periods of seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

__all__ = ["RESYNC_S", "StoreClock"]

#: How often the store's ``TIME`` is read again (seconds). Also bounds how long
#: a paused host (a suspended VM's monotonic clock stops) stamps in the past.
RESYNC_S = 10.0


class StoreClock:
    """Milliseconds on the store's clock; one ``TIME`` per :data:`RESYNC_S`.

    ``monotonic`` is a test seam (seconds, never going back).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        resync_s: float = RESYNC_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis_client
        self.resync_s = resync_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # (store ms, monotonic s) of the last reading; None: not read yet
        self._synced: tuple[int, float] | None = None

    def now_ms(self) -> int:
        """The store's time in ms (read again when the last reading is too old)."""
        synced = self._synced
        now = self._monotonic()
        if synced is None or now - synced[1] >= self.resync_s:
            synced = self._sync()
            now = synced[1]
        return synced[0] + int((now - synced[1]) * 1000)

    def _sync(self) -> tuple[int, float]:
        with self._lock:
            synced = self._synced
            if synced is not None and self._monotonic() - synced[1] < self.resync_s:
                return synced  # another thread read it while this one waited for the lock
            before = self._monotonic()
            seconds, micros = self.redis.time()
            after = self._monotonic()
            # the reply was made about half way through the round trip
            synced = (int(seconds) * 1000 + int(micros) // 1000, (before + after) / 2)
            self._synced = synced
            return synced
