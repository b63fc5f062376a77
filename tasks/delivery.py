"""One delivery of one trigger: the data flow of DESIGN.md section 3.

::

    1. parse + validate kwargs (and the plan)  invalid          -> DLQ invalid_payload
    2. claim the scope in the ledger           done / dead      -> ack, stored result
                                               other message    -> ack as duplicate
                                               own copy running -> wait, claim again
                                               delivered > N    -> DLQ redelivery_limit
    3. before every attempt: the breaker       open breaker     -> requeue, uncounted
       allows it, a rate-limit slot is due     no slot in time  -> requeue, uncounted
    4. POST to Clix (retries inside)           final 4xx        -> DLQ rejected
                                               budget spent     -> DLQ retries_exhausted,
                                                                   or requeue while the
                                                                   fleet is failing
                                               401/403, 429s    -> requeue, uncounted
    5. commit done(trigger_id) and ack         store away       -> retry the commit while
                                                                   the lease lasts
    anything else (Redis down, a bug)         -> release the claim, requeue the message

The gate of step 3 runs after the claim, right before each request: a copy
that waited for its own running delivery, and the half-open probe, pass it
like any other request. Every wait and request ends by the delivery's deadline
(:attr:`config.settings.Settings.delivery_deadline_s`), before the broker could
hand the message out again.

Once Clix accepted the trigger, the delivery never forgets it: the ``trigger_id``
is committed (retrying while the store is away), the breaker and the limiter
are told on a best-effort basis, and if the store stays away past the lease
the claim is left to expire with ``sending`` set, so the next delivery counts
its resend as the one ambiguous duplicate instead of forgetting it.

The message is acknowledged (the task returns or raises :class:`DeadLettered`)
only after its outcome is in Redis. Every error goes through
:func:`tasks.errors.route_for`, the one place that decides its route.

This module is the flow itself (parse, claim, send, commit). Around it:
:mod:`tasks.attempts` (the hooks before and after each request of step 3-4),
:mod:`tasks.failure_routes` (what happens to a delivery that failed) and
:mod:`tasks.dead_lettering` (what a dead-lettered delivery leaves in the DLQ).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from config.keys import Scope
from tasks import context
from tasks.attempts import AttemptHooks
from tasks.duplicates import first_result
from tasks.errors import ClaimBusy, DeadLettered, InvalidTrigger, RedeliveryLimit
from tasks.failure_routes import REQUEUE_PAUSE_S, RequeueMessage, route_failure
from tasks.feedback import FleetFeedback
from tasks.idempotency import Claim, ClaimState, ResultRecord, new_owner
from tasks.metrics import count_outcome
from tasks.models import TriggerRequest
from tasks.plans import check_contract

# REQUEUE_PAUSE_S and RequeueMessage live with the failure routes; callers import them here
__all__ = ["REQUEUE_PAUSE_S", "STORE_UNAVAILABLE", "Delivery", "EarlyCopy", "RequeueMessage"]

logger = logging.getLogger("clix.trigger")

#: Store errors worth waiting out when a commit must land (a dropped connection,
#: a restarting Redis, a replica promoted during failover).
STORE_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)
#: Longest pause between two commit attempts while the store is away.
COMMIT_RETRY_MAX_S = 1.0


class EarlyCopy(Exception):
    """A scheduled trigger's message arrived before its time: drop it, store no result."""


class Delivery:
    """One delivery of one message. Build per message; the context is per process."""

    def __init__(
        self,
        ctx: context.WorkerContext,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        result_record: Callable[[dict[str, Any]], ResultRecord | None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.feedback = FleetFeedback(ctx.breaker, ctx.limiter, ctx.settings, wall_clock=wall_clock)
        #: the hooks around each request, and what they learn (tasks.attempts)
        self.hooks = AttemptHooks(self, self.feedback)
        self.clock = clock  # deadlines and leases
        self.wall_clock = wall_clock  # when attempts were made (their history)
        # the task's result as Celery stores it, for the commit to write in its step
        self.result_record = result_record
        #: whether the commit wrote the task's result (else the task stores it)
        self.result_written = False
        self.task_id = task_id
        self.args = args
        self.kwargs = kwargs
        self.sleep = sleep
        self.owner = new_owner(task_id)
        self.project_id = ctx.project_id
        self.trigger: TriggerRequest | None = None
        self.scope: Scope | None = None
        self.claim: Claim | None = None
        self.attempts = 0
        self.accepted: str | None = None  # the trigger_id once Clix accepted: never forgotten
        self._started = clock()
        self._deadline = self._started + ctx.settings.delivery_deadline_s
        #: until when this delivery's claim is surely its own (its lease)
        self.lease_until = self._started
        self.fields: dict[str, Any] = {
            "task_id": task_id,
            "campaign_id": kwargs.get("campaign_id"),
            "idempotency_key": kwargs.get("idempotency_key"),
        }

    def run(self) -> dict[str, Any]:
        """Deliver; return the result, raise :class:`DeadLettered` or :class:`RequeueMessage`."""
        try:
            return self._deliver()
        except (DeadLettered, EarlyCopy):
            raise
        except Exception as exc:  # noqa: BLE001 - every error is routed, none escapes
            return route_failure(self, exc)

    def _deliver(self) -> dict[str, Any]:
        if self.args:
            raise InvalidTrigger(["trigger_campaign takes keyword arguments only"])
        trigger = self.trigger = TriggerRequest.parse(self.kwargs)
        if trigger.campaign_id in self.ctx.plans:  # without a plan there is nothing to check
            # producers in other languages skip the producer-side check
            strict = self.ctx.settings.clix_plans_strict
            check_contract(trigger.to_kwargs(), self.ctx.plans, strict=strict)
        scope = self.scope = Scope(self.project_id, trigger.campaign_id, trigger.idempotency_key)
        claim = self.claim = self._claim(scope)
        if claim.state is not ClaimState.CLAIMED:
            return self._not_ours(scope, claim)
        self.attempts = claim.attempts
        if claim.took_over_mid_request:
            self.ambiguous("took over from a delivery that died mid-request")
        limit = self.ctx.settings.clix_redelivery_limit
        if claim.deliveries > limit:
            raise RedeliveryLimit(
                f"delivered {claim.deliveries} times (limit {limit}): "
                "the message keeps killing or failing its worker"
            )
        self.hooks.unsent = True  # the claim registered attempt 1
        sent = self.ctx.clix.trigger(
            trigger,
            before_attempt=self.hooks.before,
            after_attempt=self.hooks.after,
            remaining_s=self.remaining_s,
            slot_wait_s=lambda: self.hooks.slot_wait_s,
        )
        self.accepted = sent.trigger_id
        if not self._commit(scope, sent.trigger_id):
            self.ambiguous("another delivery took the scope over while this one was sending")
        self.log(
            "sent",
            trigger_id=sent.trigger_id,
            attempt=self.attempts,
            latency_ms=round((self.clock() - self._started) * 1000, 1),
        )
        return {"trigger_id": sent.trigger_id, "deduplicated": False}

    def _not_ours(self, scope: Scope, claim: Claim) -> dict[str, Any]:
        """Acknowledge without a request; the result says what holds the key."""
        if claim.state is ClaimState.SCHEDULED and claim.scheduled_task_id == self.task_id:
            # a copy published before its time (send_task with an ETA): the mover
            # publishes the trigger again, with this task id, when it is due
            self.log("deduplicated", claim="early")
            raise EarlyCopy(f"scheduled: {self.task_id} is sent when it is due")
        result: dict[str, Any] = {"trigger_id": claim.trigger_id, "deduplicated": True}
        if claim.state is ClaimState.OTHER:  # the original is in flight: learn its result
            result = first_result(
                self.ctx.store,
                scope,
                wait_s=min(self.ctx.settings.clix_duplicate_wait_s, max(0.0, self.remaining_s())),
                sleep=self.sleep,
                clock=self.clock,
            )
        elif claim.state in (ClaimState.SCHEDULED, ClaimState.CANCELLED):
            result["state"] = claim.state.value
        self.log(
            "deduplicated",
            claim=claim.state.value,
            trigger_id=result["trigger_id"],
            dead_entry_id=claim.dead_entry_id,
        )
        return result

    def remaining_s(self) -> float:
        """Seconds left before the delivery's deadline."""
        return self._deadline - self.clock()

    def _claim(self, scope: Scope) -> Claim:
        """Claim, waiting while a copy of this same message still runs."""
        settings = self.ctx.settings
        while True:
            claim = self.ctx.store.claim(
                scope,
                self.owner,
                redelivery_limit=settings.clix_redelivery_limit,
                slot=self.ctx.limiter.slot_request(self.slot_within_s()),
            )
            if claim.state is not ClaimState.OWN_LIVE:
                self.lease_until = self.clock() + settings.clix_lease_s
                return claim
            pause = min(1.0, claim.lease_left_ms / 1000 + 0.05)
            if self.clock() + pause > self._deadline:
                raise ClaimBusy("a copy of this message still holds the claim")
            self.sleep(pause)

    def _commit(self, scope: Scope, trigger_id: str) -> bool:
        """Commit what Clix accepted, retrying while the store is away and the lease lasts.

        Nobody else can claim the scope while the lease is live, so a commit
        that lands within it leaves exactly one request behind. Raises the
        store's error when the lease ran out first.
        """
        result = None
        if self.result_record is not None:
            result = self.result_record({"trigger_id": trigger_id, "deduplicated": False})
        pause = 0.05
        while True:
            try:
                committed = self.ctx.store.commit(
                    scope,
                    self.owner,
                    trigger_id,
                    result=result,
                    attempt=self.hooks.success,
                    history_cap=self.ctx.history.cap,
                )
                self.result_written = committed and result is not None
                return committed
            except STORE_UNAVAILABLE as exc:
                if self.clock() + pause > self.lease_until:
                    self.log(
                        "commit_failed",
                        trigger_id=trigger_id,
                        error=f"{type(exc).__name__}: {exc}",
                        level=logging.ERROR,
                    )
                    raise
                self.log(
                    "commit_retry",
                    trigger_id=trigger_id,
                    error=type(exc).__name__,
                    level=logging.WARNING,
                )
                self.sleep(pause)
                pause = min(pause * 2, COMMIT_RETRY_MAX_S)

    def slot_within_s(self) -> float:
        """How long a rate-limit slot may be waited for."""
        # a rate-limit slot must leave room for the request itself before the deadline
        return max(0.0, self.remaining_s() - self.ctx.settings.clix_request_timeout_s)

    def ambiguous(self, why: str) -> None:
        """Count and log the one duplicate send the system allows."""
        total = self.ctx.store.count("ambiguous_duplicates")
        self.log("ambiguous_duplicate", why=why, fleet_total=total, level=logging.WARNING)

    def log(self, outcome: str, level: int = logging.INFO, **more: Any) -> None:
        """Count and log one outcome event of this delivery."""
        # Every outcome event passes here exactly once: count it (labels are bounded
        # and validated in tasks.metrics; ids and keys never become labels).
        count_outcome(outcome, more.get("reason"))
        event = {"outcome": outcome, **self.fields}
        event.update((k, v) for k, v in more.items() if v is not None)
        logger.log(
            level,
            "trigger %s",
            " ".join(f"{k}={v}" for k, v in event.items()),
            extra={"clix": event},
        )
