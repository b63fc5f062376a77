"""The hooks around each HTTP attempt of a delivery (steps 3 and 4 of :mod:`tasks.delivery`).

:class:`tasks.client.ClixClient` calls :meth:`AttemptHooks.before` right before
each request and :meth:`AttemptHooks.after` right after it, retries included::

    before: the breaker allows it, a rate-limit slot is due (the claim reserved
            the first one), the lease is renewed and the attempt registered
    after:  the latency and status are counted, the breaker and the limiter are
            told (best effort), a failed attempt joins the ledger's history

What the hooks learn is kept here for the rest of the delivery: how many
requests failed for the system's sake (the failure route asks the breaker with
it), whether an attempt is registered but unsent (a released claim uncounts it)
and the successful attempt's history entry (recorded by the commit).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import redis

from tasks.breaker import Outcome
from tasks.client import is_ambiguous
from tasks.errors import BreakerOpen, ClaimLost, ClixError
from tasks.feedback import FleetFeedback, outcome_of
from tasks.history import attempt_of
from tasks.metrics import observe_request, status_of
from tasks.quota import Quota

if TYPE_CHECKING:
    from tasks.delivery import Delivery

__all__ = ["AttemptHooks"]


class AttemptHooks:
    """Gate, renew and bookkeeping around each request of one delivery."""

    def __init__(self, delivery: Delivery, feedback: FleetFeedback) -> None:
        self.delivery = delivery
        self.feedback = feedback
        #: the successful attempt's history entry, for the commit
        self.success: str = ""
        #: requests of this delivery that failed for the system's sake
        self.failures = 0
        #: an attempt is registered in the ledger, not yet sent
        self.unsent = False
        #: seconds spent waiting for rate-limit slots: the fleet's pace, not the
        #: trigger's retrying, so the retry budget does not pay for them
        self.slot_wait_s = 0.0
        self._last_ambiguous = False
        self._probe = False  # this delivery holds the breaker's half-open probe token

    def gate(self, reserved_us: int | None = None) -> None:
        """Before a request: the breaker must allow it, then a rate-limit slot is due.

        ``reserved_us``: the claim already reserved the slot; wait for it only.
        """
        d = self.delivery
        allowed, verdict = d.ctx.breaker.allow(d.owner)
        if not allowed:
            raise BreakerOpen(f"circuit breaker open ({verdict}): the message stays queued")
        self._probe = verdict == "probe"
        if self._probe:
            d.log("breaker_probe", level=logging.WARNING)
        if reserved_us is not None:
            self.slot_wait_s += d.ctx.limiter.wait_for(reserved_us)
            return
        self.slot_wait_s += d.ctx.limiter.acquire(
            on_wait=self.keep_lease, within_s=d.slot_within_s()
        )

    def keep_lease(self) -> None:
        """During a long wait for a rate-limit slot: keep (or re-take) the lease."""
        d = self.delivery
        assert d.scope is not None
        if not d.ctx.store.extend(d.scope, d.owner):
            raise ClaimLost("the scope was taken over while this delivery waited")
        d.lease_until = d.clock() + d.ctx.settings.clix_lease_s

    def before(self, number: int) -> None:
        """Right before request ``number``: gate it; from the second on, renew and register."""
        d = self.delivery
        assert d.scope is not None
        if number == 1:  # the claim registered the first attempt and reserved its slot
            self.gate(d.claim.slot_wait_us if d.claim is not None else None)
            return
        self.gate()
        total = d.ctx.store.renew(d.scope, d.owner, number)
        if total is None:
            raise ClaimLost("the scope was taken over while this delivery was retrying")
        d.lease_until = d.clock() + d.ctx.settings.clix_lease_s
        self.unsent = True
        d.attempts = total
        if self._last_ambiguous:
            d.ambiguous("resending after a request whose answer was lost")

    def after(
        self, number: int, error: ClixError | None, latency_ms: float, quota: Quota | None
    ) -> None:
        """Right after request ``number``: count it, tell the fleet, keep its history."""
        d = self.delivery
        assert d.scope is not None
        self.unsent = False
        if outcome_of(error) is not Outcome.OK:
            self.failures += 1
        observe_request(latency_ms / 1000, status_of(error))
        self._last_ambiguous = is_ambiguous(error)
        worker = d.ctx.history.worker_id()  # no round trip
        attempt = attempt_of(d.attempts, error, latency_ms, d.wall_clock(), worker)
        if error is None:
            self.success = attempt.encode()  # recorded by the commit, in its step
        # Advice to the fleet, not the trigger's outcome: a store error here must
        # not turn an accepted trigger into a requeue (and a resend).
        probe, self._probe = self._probe, False  # one request answers for the probe
        try:
            retry_after_s = self.feedback.tell(error, quota, owner=d.owner, probe=probe)
            if retry_after_s is not None:
                d.log("rate_limited", retry_after_s=retry_after_s, level=logging.WARNING)
            if error is not None and not self._last_ambiguous:
                d.ctx.store.not_sent(d.scope, d.owner)
            if error is not None:
                d.ctx.history.record(d.scope, attempt)
        except redis.RedisError as exc:
            d.log("bookkeeping_failed", error=type(exc).__name__, level=logging.WARNING)
        if error is None:
            return
        d.log(
            "attempt_failed",
            attempt=number,
            status=error.status_code,
            error=str(error),
            latency_ms=round(latency_ms, 1),
            level=logging.WARNING,
        )
