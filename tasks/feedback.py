"""What one answer of Clix tells the whole fleet: the breaker's outcome and the limiter's pace.

Every request's answer is also news about Clix, shared through Redis:

* the circuit breaker learns whether the request failed for the system's sake
  (5xx, network error, 401/403) or not; its transitions are logged here, once,
  by the delivery that caused them;
* the rate limiter holds every worker back when Clix says so (429
  ``Retry-After``) or hints it (``X-RateLimit-Remaining`` near zero, until
  ``X-RateLimit-Reset`` measured on Clix's own clock).

This is advice, not the trigger's outcome: the delivery treats a store error
here as something to log, never as a reason to resend an accepted trigger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from config.settings import Settings
from tasks.breaker import CircuitBreaker, Outcome
from tasks.errors import (
    AuthenticationFailed,
    ClixError,
    NetworkError,
    RateLimited,
    ServerError,
)
from tasks.quota import Quota
from tasks.ratelimit import RateLimiter

__all__ = ["FleetFeedback", "outcome_of"]

logger = logging.getLogger("clix.trigger")


def outcome_of(error: ClixError | None) -> Outcome:
    """What an answer says about the system (not about the trigger)."""
    if isinstance(error, AuthenticationFailed):
        return Outcome.AUTH
    if isinstance(error, ServerError | NetworkError):
        return Outcome.FAILURE
    return Outcome.OK  # accepted, or an answer about this message only


class FleetFeedback:
    """Tells the breaker and the limiter what one answer meant. Cheap: build per delivery."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        limiter: RateLimiter,
        settings: Settings,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.breaker = breaker
        self.limiter = limiter
        self.settings = settings
        self.wall_clock = wall_clock  # X-RateLimit-Reset when Clix sent no Date header

    def tell(
        self, error: ClixError | None, quota: Quota | None, *, owner: str, probe: bool
    ) -> float | None:
        """Report one answer; return the ``Retry-After`` honoured for a 429, else ``None``.

        ``probe``: the request was the breaker's half-open probe, whose outcome
        alone closes or reopens an open breaker.
        """
        outcome = outcome_of(error)
        transition = self.breaker.record(outcome, owner, probe=probe)
        if transition:
            self._log_transition(transition, outcome, error)
        return self._pace(error, quota)

    def _pace(self, error: ClixError | None, quota: Quota | None) -> float | None:
        cap = self.settings.clix_retry_after_max_s
        if isinstance(error, RateLimited):
            wait = error.retry_after_s if error.retry_after_s is not None else 1.0
            self.limiter.hold(min(wait, cap))
            return wait
        if quota is not None and quota.limit and quota.remaining is not None:
            low = quota.remaining <= quota.limit * self.settings.clix_rate_limit_low_watermark
            reset_in = quota.reset_in_s(self.wall_clock())
            if reset_in is None:
                reset_in = 1.0
            if low and reset_in > 0:
                self.limiter.hold(min(reset_in, cap))
        return None

    def _log_transition(self, transition: str, outcome: Outcome, error: ClixError | None) -> None:
        if transition == "closed":
            logger.warning("circuit breaker closed: Clix answers again; consuming resumes")
        elif outcome is Outcome.AUTH:
            logger.error(
                "Clix refused the credentials (%s): fix CLIX_API_KEY / CLIX_PROJECT_ID. "
                "Consuming is paused fleet-wide and messages stay queued; a probe goes out "
                "every %g s and the fleet resumes by itself once the key is accepted",
                error.status_code if error else "?",
                self.settings.clix_auth_probe_s,
            )
        else:
            logger.error(
                "circuit breaker %s: most recent requests to Clix failed (%s); consuming is "
                "paused fleet-wide, probing every %g s",
                transition,
                error,
                self.settings.clix_breaker_probe_s,
            )
