"""What the system knows about one trigger, from every record that can hold it.

A trigger is in exactly one state at a time; :func:`look_up` reads them all (the
ledger's own status, then one pipelined round trip) and names it, most advanced first: ``done``,
``in_flight``, ``dead_lettered``, ``cancelled``, ``scheduled`` (with
``send_at``), ``queued`` (a pending record), else ``unknown``. The ledger part
is project-scoped; the other records are keyed by campaign and key only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.keys import Scope, as_text
from tasks.dlq_entry import iso_time
from tasks.history import FIELD, Attempt, parse, resolve_workers
from tasks.idempotency import IdempotencyStore

__all__ = ["TriggerState", "look_up"]


@dataclass(frozen=True, slots=True)
class TriggerState:
    """One trigger's state as ``clix-worker status`` shows it."""

    state: str
    trigger_id: str | None = None
    dead_entry_id: str | None = None
    send_at_ms: int | None = None
    attempts: list[Attempt] = field(default_factory=list)

    def to_json(self, campaign_id: str, idempotency_key: str, *, history: bool) -> dict[str, Any]:
        """The ``status --json`` document (``--history`` adds ``attempts``)."""
        data: dict[str, Any] = {
            "campaign_id": campaign_id,
            "idempotency_key": idempotency_key,
            "state": self.state,
            "trigger_id": self.trigger_id,
        }
        if self.send_at_ms is not None:
            data["send_at"] = iso_time(self.send_at_ms / 1000)
        if self.dead_entry_id:
            data["dead_letter_id"] = self.dead_entry_id
        if history:
            data["attempts"] = [attempt.to_json() for attempt in self.attempts]
        return data


def look_up(store: IdempotencyStore, scope: Scope) -> TriggerState:
    """Read every record of ``scope``'s trigger (two round trips); name its state."""
    keys, campaign, key = store.keys, scope.campaign_id, scope.idempotency_key
    ledger = store.status(scope)
    pipe = store.redis.pipeline(transaction=False)
    pipe.exists(keys.cancelled(campaign, key))
    pipe.hget(keys.scheduled(campaign, key), "send_at_ms")
    pipe.hget(keys.meta(scope), FIELD)
    pipe.get(keys.done(scope))  # a done trigger's history is in its done record
    cancelled, send_at, history, done = pipe.execute()
    stored = parse(done, done=True) if done is not None else parse(history)
    attempts = resolve_workers(store.redis, keys, stored)
    if ledger.state in ("done", "in_flight"):
        return TriggerState(ledger.state, trigger_id=ledger.trigger_id, attempts=attempts)
    if ledger.dead_entry_id:
        return TriggerState("dead_lettered", dead_entry_id=ledger.dead_entry_id, attempts=attempts)
    if cancelled:
        return TriggerState("cancelled", attempts=attempts)
    if send_at is not None:
        return TriggerState("scheduled", send_at_ms=int(as_text(send_at)), attempts=attempts)
    return TriggerState(ledger.state, attempts=attempts)  # queued or unknown
