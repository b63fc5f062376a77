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
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from config.keys import Scope
from tasks import context
from tasks.breaker import Outcome
from tasks.client import is_ambiguous
from tasks.duplicates import first_result
from tasks.errors import (
    BreakerOpen,
    ClaimBusy,
    ClaimLost,
    ClixError,
    DeadLettered,
    InvalidTrigger,
    Quota,
    RedeliveryLimit,
    Route,
    TransientError,
    route_for,
)
from tasks.feedback import FleetFeedback, outcome_of
from tasks.history import attempt_of
from tasks.idempotency import Claim, ClaimState, ResultRecord, new_owner
from tasks.metrics import count_outcome, observe_request, status_of
from tasks.models import TriggerRequest
from tasks.plans import check_contract

__all__ = ["REQUEUE_PAUSE_S", "Delivery", "EarlyCopy", "RequeueMessage"]

logger = logging.getLogger("clix.trigger")

#: Pause before requeueing, so a Redis outage or an open breaker does not
#: become a hot redelivery loop.
REQUEUE_PAUSE_S = 1.0

#: Store errors worth waiting out when a commit must land (a dropped connection,
#: a restarting Redis, a replica promoted during failover).
STORE_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)
#: Longest pause between two commit attempts while the store is away.
COMMIT_RETRY_MAX_S = 1.0


class RequeueMessage(Exception):
    """The delivery gave its claim back; the broker must deliver the message again."""


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
        self.clock = clock  # deadlines and leases
        self.wall_clock = wall_clock  # when attempts were made (their history)
        self._success: str = ""  # the successful attempt's history entry, for the commit
        # the task's result as Celery stores it, for the commit to write in its step
        self.result_record = result_record
        #: whether the commit wrote the task's result (else the task stores it)
        self.result_written = False
        self.task_id = task_id
        self.args = args
        self.kwargs = kwargs
        self.sleep = sleep
        self.owner = new_owner(task_id)
        self.project_id, _ = ctx.settings.require_credentials()
        self.trigger: TriggerRequest | None = None
        self.scope: Scope | None = None
        self.claim: Claim | None = None
        self.attempts = 0
        self.accepted: str | None = None  # the trigger_id once Clix accepted: never forgotten
        self._last_ambiguous = False
        self._probe = False  # this delivery holds the breaker's half-open probe token
        self._failures = 0  # requests of this delivery that failed for the system's sake
        self._unsent_attempt = False  # an attempt is registered in the ledger, not yet sent
        self._started = clock()
        self._deadline = self._started + ctx.settings.delivery_deadline_s
        self._lease_until = self._started
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
            return self._route(exc)

    def _deliver(self) -> dict[str, Any]:
        if self.args:
            raise InvalidTrigger(["trigger_campaign takes keyword arguments only"])
        trigger = self.trigger = TriggerRequest.parse(self.kwargs)
        # producers in other languages skip the producer-side check
        settings = self.ctx.settings
        check_contract(trigger.to_kwargs(), self.ctx.plans, strict=settings.clix_plans_strict)
        scope = self.scope = Scope(self.project_id, trigger.campaign_id, trigger.idempotency_key)
        claim = self.claim = self._claim(scope)
        if claim.state is not ClaimState.CLAIMED:
            return self._not_ours(scope, claim)
        self.attempts = claim.attempts
        if claim.took_over_mid_request:
            self._ambiguous("took over from a delivery that died mid-request")
        limit = self.ctx.settings.clix_redelivery_limit
        if claim.deliveries > limit:
            raise RedeliveryLimit(
                f"delivered {claim.deliveries} times (limit {limit}): "
                "the message keeps killing or failing its worker"
            )
        self._unsent_attempt = True  # the claim registered attempt 1
        sent = self.ctx.clix.trigger(
            trigger,
            before_attempt=self._before_attempt,
            after_attempt=self._after_attempt,
            remaining_s=self._remaining_s,
        )
        self.accepted = sent.trigger_id
        if not self._commit(scope, sent.trigger_id):
            self._ambiguous("another delivery took the scope over while this one was sending")
        self._log(
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
            self._log("deduplicated", claim="early")
            raise EarlyCopy(f"scheduled: {self.task_id} is sent when it is due")
        result: dict[str, Any] = {"trigger_id": claim.trigger_id, "deduplicated": True}
        if claim.state is ClaimState.OTHER:  # the original is in flight: learn its result
            result = first_result(
                self.ctx.store,
                scope,
                wait_s=min(self.ctx.settings.clix_duplicate_wait_s, max(0.0, self._remaining_s())),
                sleep=self.sleep,
                clock=self.clock,
            )
        elif claim.state in (ClaimState.SCHEDULED, ClaimState.CANCELLED):
            result["state"] = claim.state.value
        self._log(
            "deduplicated",
            claim=claim.state.value,
            trigger_id=result["trigger_id"],
            dead_entry_id=claim.dead_entry_id,
        )
        return result

    def _remaining_s(self) -> float:
        return self._deadline - self.clock()

    def _claim(self, scope: Scope) -> Claim:
        """Claim, waiting while a copy of this same message still runs."""
        settings = self.ctx.settings
        while True:
            claim = self.ctx.store.claim(
                scope,
                self.owner,
                redelivery_limit=settings.clix_redelivery_limit,
                slot=self.ctx.limiter.slot_request(self._slot_within_s()),
            )
            if claim.state is not ClaimState.OWN_LIVE:
                self._lease_until = self.clock() + settings.clix_lease_s
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
                    attempt=self._success,
                    history_cap=self.ctx.history.cap,
                )
                self.result_written = committed and result is not None
                return committed
            except STORE_UNAVAILABLE as exc:
                if self.clock() + pause > self._lease_until:
                    self._log(
                        "commit_failed",
                        trigger_id=trigger_id,
                        error=f"{type(exc).__name__}: {exc}",
                        level=logging.ERROR,
                    )
                    raise
                self._log(
                    "commit_retry",
                    trigger_id=trigger_id,
                    error=type(exc).__name__,
                    level=logging.WARNING,
                )
                self.sleep(pause)
                pause = min(pause * 2, COMMIT_RETRY_MAX_S)

    def _slot_within_s(self) -> float:
        # a rate-limit slot must leave room for the request itself before the deadline
        return max(0.0, self._remaining_s() - self.ctx.settings.clix_request_timeout_s)

    def _gate(self, reserved_us: int | None = None) -> None:
        """Before a request: the breaker must allow it, then a rate-limit slot is due.

        ``reserved_us``: the claim already reserved the slot; wait for it only.
        """
        allowed, verdict = self.ctx.breaker.allow(self.owner)
        if not allowed:
            raise BreakerOpen(f"circuit breaker open ({verdict}): the message stays queued")
        self._probe = verdict == "probe"
        if self._probe:
            self._log("breaker_probe", level=logging.WARNING)
        if reserved_us is not None:
            self.ctx.limiter.wait_for(reserved_us)
            return
        self.ctx.limiter.acquire(on_wait=self._keep_lease, within_s=self._slot_within_s())

    def _keep_lease(self) -> None:
        """During a long wait for a rate-limit slot: keep (or re-take) the lease."""
        assert self.scope is not None
        if not self.ctx.store.extend(self.scope, self.owner):
            raise ClaimLost("the scope was taken over while this delivery waited")
        self._lease_until = self.clock() + self.ctx.settings.clix_lease_s

    def _before_attempt(self, number: int) -> None:
        assert self.scope is not None
        if number == 1:  # the claim registered the first attempt and reserved its slot
            self._gate(self.claim.slot_wait_us if self.claim is not None else None)
            return
        self._gate()
        total = self.ctx.store.renew(self.scope, self.owner, number)
        if total is None:
            raise ClaimLost("the scope was taken over while this delivery was retrying")
        self._lease_until = self.clock() + self.ctx.settings.clix_lease_s
        self._unsent_attempt = True
        self.attempts = total
        if self._last_ambiguous:
            self._ambiguous("resending after a request whose answer was lost")

    def _after_attempt(
        self, number: int, error: ClixError | None, latency_ms: float, quota: Quota | None
    ) -> None:
        assert self.scope is not None
        self._unsent_attempt = False
        if outcome_of(error) is not Outcome.OK:
            self._failures += 1
        observe_request(latency_ms / 1000, status_of(error))
        self._last_ambiguous = is_ambiguous(error)
        worker = self.ctx.history.worker_id()  # no round trip
        attempt = attempt_of(self.attempts, error, latency_ms, self.wall_clock(), worker)
        if error is None:
            self._success = attempt.encode()  # recorded by the commit, in its step
        # Advice to the fleet, not the trigger's outcome: a store error here must
        # not turn an accepted trigger into a requeue (and a resend).
        probe, self._probe = self._probe, False  # one request answers for the probe
        try:
            retry_after_s = self.feedback.tell(error, quota, owner=self.owner, probe=probe)
            if retry_after_s is not None:
                self._log("rate_limited", retry_after_s=retry_after_s, level=logging.WARNING)
            if error is not None and not self._last_ambiguous:
                self.ctx.store.not_sent(self.scope, self.owner)
            if error is not None:
                self.ctx.history.record(self.scope, attempt)
        except redis.RedisError as exc:
            self._log("bookkeeping_failed", error=type(exc).__name__, level=logging.WARNING)
        if error is None:
            return
        self._log(
            "attempt_failed",
            attempt=number,
            status=error.status_code,
            error=str(error),
            latency_ms=round(latency_ms, 1),
            level=logging.WARNING,
        )

    def _route(self, exc: Exception) -> dict[str, Any]:
        systemic = False
        if isinstance(exc, TransientError):
            try:
                systemic = self.ctx.breaker.systemic(own_failures=self._failures)
            except redis.RedisError:
                systemic = True  # the store is away too: the fleet is in trouble, not the trigger
        decision = route_for(exc, systemic=systemic)
        if decision.route is Route.DUPLICATE:
            self._log("deduplicated", claim="lost")
            return {"trigger_id": None, "deduplicated": True}
        if decision.route is Route.DEAD_LETTER and decision.reason is not None:
            try:
                entry_id = self._dead_letter(decision.reason, exc)
            except Exception as dlq_exc:  # noqa: BLE001 - could not make the outcome durable
                exc = dlq_exc
            else:
                raise DeadLettered(entry_id, decision.reason) from None
        # Our infrastructure failed, or the system is in trouble, not the trigger:
        # let the broker deliver the message again.
        self._log(
            "requeued",
            error=f"{type(exc).__name__}: {exc}",
            trigger_id=self.accepted,
            level=logging.ERROR,
        )
        if self.scope is not None and self.accepted is None:
            # Give the claim back. Never once Clix accepted: the lease expires
            # with `sending` set, and the next delivery's resend is counted.
            try:
                self.ctx.store.release(
                    self.scope,
                    self.owner,
                    uncount=not decision.counts_as_delivery,
                    unsent=self._unsent_attempt,
                )
            except Exception:
                logger.debug("could not release the claim", exc_info=True)
        self.sleep(REQUEUE_PAUSE_S)
        raise RequeueMessage(f"{type(exc).__name__}: {exc}") from None

    def _dead_letter(self, reason: str, exc: Exception) -> str:
        dlq = self.ctx.dlq
        entry = dlq.new_entry(
            reason=reason,
            error=str(exc),
            trigger=self.trigger.to_kwargs() if self.trigger else dict(self.kwargs),
            # positional arguments have no place in a trigger: keep them for inspection
            raw=json.dumps({"args": self.args, "kwargs": self.kwargs}, default=repr)
            if self.args
            else None,
            status_code=getattr(exc, "status_code", None),
            attempts=self.attempts,
            first_seen=self.claim.first_seen if self.claim else None,
            project_id=self.project_id,
            task_id=self.task_id,
        )
        if self.scope is not None and self.attempts:
            # the attempts so far (ids and statuses only), from the ledger
            entry["history"] = [a.to_json() for a in self.ctx.history.read(self.scope)]
        plan = self.ctx.plans.get(str(self.kwargs.get("campaign_id")))
        if plan is not None and plan.pii_keys:
            # the entry keeps the whole trigger for replay; these are hidden when shown
            entry["pii"] = sorted(plan.pii_keys)
        owned = self.claim is not None and self.claim.state is ClaimState.CLAIMED
        entry_id = dlq.add(entry, scope=self.scope if owned else None, owner=self.owner)
        self._log(
            "dead_lettered",
            reason=reason,
            status=entry["status_code"],
            attempt=self.attempts,
            dead_letter_id=entry_id,
            error=str(exc),
            level=logging.ERROR,
        )
        return entry_id

    def _ambiguous(self, why: str) -> None:
        """Count and log the one duplicate send the system allows."""
        total = self.ctx.store.count("ambiguous_duplicates")
        self._log("ambiguous_duplicate", why=why, fleet_total=total, level=logging.WARNING)

    def _log(self, outcome: str, level: int = logging.INFO, **more: Any) -> None:
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
