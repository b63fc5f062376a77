"""A duplicate that arrives while the original is in flight learns the original's result.

The claim answers ``OTHER`` when a different message holds the key: the
original is being delivered right now. Instead of returning ``trigger_id:
null``, the duplicate polls the ledger for a bounded time
(``CLIX_DUPLICATE_WAIT_S``, default 3 s; each poll one read) and returns the
original's ``trigger_id`` once it is committed. If the original is still in
flight when the wait is over, the result says so: ``"state": "in_flight"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from config.keys import Scope
from tasks.idempotency import IdempotencyStore

__all__ = ["first_result"]

#: First pause between two polls; doubled up to :data:`MAX_POLL_S`.
FIRST_POLL_S = 0.05
MAX_POLL_S = 0.5


def first_result(
    store: IdempotencyStore,
    scope: Scope,
    *,
    wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The duplicate's task result: the original's trigger_id, or ``state`` when unknown yet."""
    deadline = clock() + wait_s
    pause = FIRST_POLL_S
    while True:
        status = store.status(scope)
        if status.state == "done":
            return {"trigger_id": status.trigger_id, "deduplicated": True}
        if status.dead_entry_id:
            return {"trigger_id": None, "deduplicated": True, "state": "dead_lettered"}
        if status.state != "in_flight":  # released for a retry: it is queued again
            return {"trigger_id": None, "deduplicated": True, "state": status.state}
        if clock() + pause > deadline:
            return {"trigger_id": None, "deduplicated": True, "state": "in_flight"}
        sleep(pause)
        pause = min(pause * 2, MAX_POLL_S)
