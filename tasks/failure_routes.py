"""What happens to a delivery that failed: the one place that applies a route.

:func:`tasks.errors.route_for` decides the route of every error; this module
carries it out::

    duplicate      the claim was lost to another delivery -> ack as duplicate
    dead_letter    a DLQ entry closes the claim           -> raise DeadLettered
    requeue        give the claim back (never once Clix   -> pause, raise RequeueMessage
                   accepted), let the broker deliver again

A transient error asks the breaker whether the fleet is failing (then the
trigger is requeued rather than dead-lettered, and a retry cut short by the
deadline is requeued uncounted); a DLQ that cannot be written turns a dead
letter into a requeue, since the outcome could not be made durable.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis

from tasks.dead_lettering import dead_letter
from tasks.errors import DeadLettered, OutOfTime, Route, TransientError, route_for

if TYPE_CHECKING:
    from tasks.delivery import Delivery

__all__ = ["REQUEUE_PAUSE_S", "RequeueMessage", "route_failure"]

logger = logging.getLogger("clix.trigger")

#: Pause before requeueing, so a Redis outage or an open breaker does not
#: become a hot redelivery loop.
REQUEUE_PAUSE_S = 1.0


class RequeueMessage(Exception):
    """The delivery gave its claim back; the broker must deliver the message again."""


def route_failure(delivery: Delivery, exc: Exception) -> dict[str, Any]:
    """Apply the route of ``exc``: return a duplicate's result, or raise.

    Raises :class:`DeadLettered` once the DLQ entry is stored, else
    :class:`RequeueMessage` after giving the claim back.
    """
    d = delivery
    systemic = False
    if isinstance(exc, TransientError | OutOfTime):
        try:
            systemic = d.ctx.breaker.systemic(own_failures=d.hooks.failures)
        except redis.RedisError:
            systemic = True  # the store is away too: the fleet is in trouble, not the trigger
    decision = route_for(exc, systemic=systemic)
    if decision.route is Route.DUPLICATE:
        d.log("deduplicated", claim="lost")
        return {"trigger_id": None, "deduplicated": True}
    if decision.route is Route.DEAD_LETTER and decision.reason is not None:
        try:
            entry_id = dead_letter(d, decision.reason, exc)
        except Exception as dlq_exc:  # noqa: BLE001 - could not make the outcome durable
            exc = dlq_exc
        else:
            raise DeadLettered(entry_id, decision.reason) from None
    # Our infrastructure failed, or the system is in trouble, not the trigger:
    # let the broker deliver the message again.
    d.log(
        "requeued",
        error=f"{type(exc).__name__}: {exc}",
        trigger_id=d.accepted,
        level=logging.ERROR,
    )
    if d.scope is not None and d.accepted is None:
        # Give the claim back. Never once Clix accepted: the lease expires
        # with `sending` set, and the next delivery's resend is counted.
        try:
            d.ctx.store.release(
                d.scope,
                d.owner,
                uncount=not decision.counts_as_delivery,
                unsent=d.hooks.unsent,
            )
        except Exception:
            logger.debug("could not release the claim", exc_info=True)
    d.sleep(REQUEUE_PAUSE_S)
    raise RequeueMessage(f"{type(exc).__name__}: {exc}") from None
