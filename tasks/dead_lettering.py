"""What a dead-lettered delivery leaves in the DLQ (step "DLQ" of :mod:`tasks.delivery`).

The entry (:meth:`tasks.dlq.DeadLetterQueue.new_entry`) keeps the whole trigger
for replay, the error and its status, how many attempts were made and since
when, plus:

- ``raw``: positional arguments, kept for inspection only when a producer sent any;
- ``history``: the attempts so far from the ledger (ids and statuses only);
- ``pii``: the plan's PII keys, hidden when the entry is shown.

The entry closes the claim (``dead`` in the ledger) in the same step only when
this delivery owns the claim.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from tasks.idempotency import ClaimState

if TYPE_CHECKING:
    from tasks.delivery import Delivery

__all__ = ["dead_letter"]


def dead_letter(delivery: Delivery, reason: str, exc: Exception) -> str:
    """Add the delivery's DLQ entry for ``exc`` (closing its claim); return the entry id."""
    d = delivery
    dlq = d.ctx.dlq
    entry = dlq.new_entry(
        reason=reason,
        error=str(exc),
        trigger=d.trigger.to_kwargs() if d.trigger else dict(d.kwargs),
        # positional arguments have no place in a trigger: keep them for inspection
        raw=json.dumps({"args": d.args, "kwargs": d.kwargs}, default=repr) if d.args else None,
        status_code=getattr(exc, "status_code", None),
        attempts=d.attempts,
        first_seen=d.claim.first_seen if d.claim else None,
        project_id=d.project_id,
        task_id=d.task_id,
    )
    if d.scope is not None and d.attempts:
        # the attempts so far (ids and statuses only), from the ledger
        entry["history"] = [a.to_json() for a in d.ctx.history.read(d.scope)]
    plan = d.ctx.plans.get(str(d.kwargs.get("campaign_id")))
    if plan is not None and plan.pii_keys:
        # the entry keeps the whole trigger for replay; these are hidden when shown
        entry["pii"] = sorted(plan.pii_keys)
    owned = d.claim is not None and d.claim.state is ClaimState.CLAIMED
    entry_id = dlq.add(entry, scope=d.scope if owned else None, owner=d.owner)
    d.log(
        "dead_lettered",
        reason=reason,
        status=entry["status_code"],
        attempt=d.attempts,
        dead_letter_id=entry_id,
        error=str(exc),
        level=logging.ERROR,
    )
    return entry_id
