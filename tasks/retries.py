"""The HTTP retry policy: the one owner of resending a request to Clix.

tenacity resends on :func:`tasks.errors.is_transient` errors only (5xx, 429,
network errors), with exponential backoff and jitter, bounded by attempts and
by total time; a 4xx other than 429 is never resent. Nothing else retries: no
Celery autoretry, no redis-py retry on top of this.

The wait is "equal jitter": half of the exponential step is fixed and half is
random, so a wait is never zero (Celery's full jitter can be) yet a fleet that
failed together does not resend together. A 429 waits what ``Retry-After``
says, capped by ``CLIX_RETRY_AFTER_MAX_S``.

Budgets: 5xx and network errors spend ``CLIX_MAX_ATTEMPTS`` and
``CLIX_RETRY_DEADLINE_S``; waiting out 429s does not, it has its own bound
(``CLIX_RATE_LIMITED_MAX_WAIT_S`` of total waiting per delivery), so a burst of
rate limiting cannot push a healthy trigger into the dead-letter queue.

The sleep function is a constructor argument (tests pass a recorder).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from config.settings import Settings
from tasks.errors import RateLimited, is_transient

__all__ = ["RetryPolicy", "backoff_wait", "stop_when_budget_spent"]

T = TypeVar("T")

#: The jitter's random numbers, shared by every delivery of the process (seeding
#: a generator per delivery read the OS's entropy once per trigger); ``random()``
#: is safe to call from the pool's threads. Reseeded in a forked pool process:
#: copies of one state would retry in step, which the jitter is there to prevent.
_JITTER = random.Random()
os.register_at_fork(after_in_child=_JITTER.seed)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds of resending one trigger within one delivery."""

    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    deadline_s: float = 30.0
    retry_after_max_s: float = 20.0
    rate_limited_max_wait_s: float = 60.0
    request_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy configured by ``CLIX_MAX_ATTEMPTS`` and friends."""
        return cls(
            max_attempts=settings.clix_max_attempts,
            backoff_initial_s=settings.clix_backoff_initial_s,
            backoff_max_s=settings.clix_backoff_max_s,
            deadline_s=settings.clix_retry_deadline_s,
            retry_after_max_s=settings.clix_retry_after_max_s,
            rate_limited_max_wait_s=settings.clix_rate_limited_max_wait_s,
            request_timeout_s=settings.clix_request_timeout_s,
        )

    def retrying(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        before_sleep: Callable[[RetryCallState], None] | None = None,
        remaining_s: Callable[[], float] | None = None,
        slot_wait_s: Callable[[], float] | None = None,
    ) -> Retrying:
        """A tenacity controller for one delivery (build one per call: it keeps state).

        ``remaining_s`` tells how much of the delivery's deadline is left: no
        wait starts that, with one more request after it, would overrun it.
        ``slot_wait_s`` tells how long the attempts waited for rate-limit
        slots: time the retry deadline does not count.
        """
        wait = backoff_wait(self, rng or _JITTER)
        return Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_when_budget_spent(self, remaining_s, slot_wait_s),
            wait=wait,
            sleep=sleep,
            reraise=True,  # the last real error, not tenacity's RetryError
            before_sleep=before_sleep,
        )


class backoff_wait(wait_base):
    """Equal-jitter exponential backoff, or ``Retry-After`` for a 429."""

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            # floor: "Retry-After: 0" must not become a hot loop nor a free retry
            wait = max(exc.retry_after_s, self.policy.backoff_initial_s)
            return float(min(wait, self.policy.retry_after_max_s))
        step = min(
            self.policy.backoff_max_s,
            self.policy.backoff_initial_s * 2 ** (retry_state.attempt_number - 1),
        )
        return float(step / 2 + self.rng.uniform(0, step / 2))


class stop_when_budget_spent(stop_base):
    """Stop when the next wait would overspend one of the budgets.

    Failures other than 429 count against ``max_attempts``, and their time
    (everything but 429 waits and waits for a rate-limit slot) against
    ``deadline_s``; 429 waits count only against ``rate_limited_max_wait_s``.
    Above both stands the delivery's own deadline (``remaining_s``): the wait
    plus one more request must fit in it, or the broker would hand the message
    out again while it still runs. ``out_of_time`` tells which stopped a
    failure other than 429: true when the budgets had room left and the
    delivery's deadline did not (the caller requeues instead of
    dead-lettering). Stateful: one instance per delivery.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        remaining_s: Callable[[], float] | None = None,
        slot_wait_s: Callable[[], float] | None = None,
    ) -> None:
        self.policy = policy
        self.remaining_s = remaining_s
        self.slot_wait_s = slot_wait_s
        self.failures = 0
        self.rate_limited_s = 0.0
        self.out_of_time = False

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        # tenacity draws the wait before asking us: judge the very wait it will sleep
        next_wait = retry_state.upcoming_sleep
        if isinstance(exc, RateLimited):
            spent = self.rate_limited_s + next_wait > self.policy.rate_limited_max_wait_s
        else:
            self.failures += 1
            elapsed = (retry_state.seconds_since_start or 0.0) - self.rate_limited_s
            if self.slot_wait_s is not None:
                elapsed -= self.slot_wait_s()
            spent = (
                self.failures >= self.policy.max_attempts
                or elapsed + next_wait > self.policy.deadline_s
            )
        if spent:
            return True
        if (
            self.remaining_s is not None
            and next_wait + self.policy.request_timeout_s > self.remaining_s()
        ):
            # a 429 stays a 429 (requeued uncounted): the pace of the fleet, not time
            self.out_of_time = not isinstance(exc, RateLimited)
            return True
        if isinstance(exc, RateLimited):
            self.rate_limited_s += next_wait
        return False
