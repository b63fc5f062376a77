"""Errors of the trigger pipeline, and the one place that maps each to its route.

The tree (retryable on the left of the split, permanent on the right)::

    ClixWorkerError
    ├── InvalidTrigger (ValueError)      permanent: bad input; the field is named
    ├── ClixError                        anything that came back from calling Clix
    │   ├── TransientError               retryable: tenacity backs off and resends
    │   │   ├── ServerError              5xx
    │   │   ├── RateLimited              429, carries Retry-After
    │   │   └── NetworkError             connect error, timeout, dropped connection
    │   └── PermanentError               final: never resent
    │       └── Rejected                 4xx other than 429 (status_code)
    │           └── AuthenticationFailed 401 / 403
    ├── RedeliveryLimit                  permanent: the message keeps killing workers
    ├── Paused                           the system, not the message, is in trouble
    │   ├── BreakerOpen                  the fleet-wide breaker says do not send
    │   └── RateLimitWaitTooLong         no request slot in sight
    ├── ClaimBusy                        a copy of this message still runs
    ├── OutOfTime                        the delivery's deadline, not the retry
    │                                    budget, stopped the retries
    ├── ClaimLost                        another delivery took the scope over
    ├── ReplayRefused                    a DLQ entry that cannot be replayed
    └── DeadLettered                     raised *after* the DLQ write, so Celery
                                         records the task as failed and acks it

``ConfigurationError`` (settings) lives in :mod:`config.settings`, below
this package in the dependency order.

Routes (:func:`route_for`): a transient error that outlived tenacity's budget
goes to the DLQ as ``retries_exhausted``, one whose retries the delivery's
deadline cut short (:class:`OutOfTime`) back to the queue, counted; a
permanent one to the DLQ as ``rejected``; invalid input as
``invalid_payload``. Trouble with the system rather than the message
(401/403, 429s beyond their budget, an open breaker, no rate-limit slot)
puts the message back on the queue *uncounted*: it must not creep towards the
redelivery limit while Clix or the credentials are broken. An error of our own
infrastructure (Redis down, a bug) puts it back counted, so a message that
keeps failing is eventually dead-lettered as ``redelivery_limit``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import httpx

from tasks.quota import retry_after_s

__all__ = [
    "AuthenticationFailed",
    "BreakerOpen",
    "ClaimBusy",
    "ClaimLost",
    "ClixError",
    "ClixWorkerError",
    "DeadLettered",
    "InvalidTrigger",
    "NetworkError",
    "OutOfTime",
    "Paused",
    "PermanentError",
    "RateLimitWaitTooLong",
    "RateLimited",
    "RedeliveryLimit",
    "Rejected",
    "ReplayRefused",
    "Route",
    "ServerError",
    "TransientError",
    "is_transient",
    "route_for",
]


class ClixWorkerError(Exception):
    """Root of every error this project raises on purpose.

    Subclasses with their own constructor arguments define ``__reduce__``:
    Celery pickles a task's exception to record and log it, and an exception
    that does not round-trip is replaced by a generic wrapper (which also
    defeats the task's ``throws``).
    """


class InvalidTrigger(ClixWorkerError, ValueError):
    """A trigger breaks a rule; the message names the field (``audience.targets[0]``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid trigger: " + "; ".join(problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class ClixError(ClixWorkerError):
    """Calling Clix failed. Never carries the API key: only status and Clix's message."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


class TransientError(ClixError):
    """May succeed if sent again later."""


class ServerError(TransientError):
    """Clix answered 5xx."""


class RateLimited(TransientError):
    """Clix answered 429; ``retry_after_s`` is how long it asked us to wait."""

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, status_code=429)


class NetworkError(TransientError):
    """No answer: connection refused or dropped, or a timeout.

    ``ambiguous`` is true when the request may have reached Clix (the
    connection broke or timed out after it was sent): resending it is the one
    duplicate the system allows, and it is counted.
    """

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        self.ambiguous = ambiguous
        super().__init__(message)


class PermanentError(ClixError):
    """Will fail the same way however often it is sent."""


class Rejected(PermanentError):
    """Clix answered a final 4xx."""


class AuthenticationFailed(Rejected):
    """Clix refused the project id or API key (401 / 403)."""


class RedeliveryLimit(ClixWorkerError):
    """The trigger was delivered more often than ``CLIX_REDELIVERY_LIMIT``."""


class Paused(ClixWorkerError):
    """The system is in trouble (open breaker, no rate-limit slot): do not send now."""


class BreakerOpen(Paused):
    """The fleet-wide circuit breaker is open (credentials refused, or an outage)."""


class RateLimitWaitTooLong(Paused):
    """No request slot within the wait bound: the fleet is held back (429s)."""


class ClaimBusy(ClixWorkerError):
    """A copy of this message still holds a live lease after the longest wait."""


class OutOfTime(ClixWorkerError):
    """A transient failure with retry budget left, but no time left in this delivery.

    The delivery's deadline (before the broker hands the message out again)
    came first: its time went on waiting for a rate-limit slot, for a copy's
    lease or out 429s. The trigger is requeued, counted (so the redelivery
    limit still bounds it); the next delivery starts with a whole deadline.
    ``last`` is the failure that could not be retried.
    """

    def __init__(self, last: ClixError) -> None:
        super().__init__(f"no time left in this delivery to retry: {last}")
        self.last = last


class ClaimLost(ClixWorkerError):
    """The scope is done, dead or owned by another delivery: this one stops sending."""


class ReplayRefused(ClixWorkerError):
    """A DLQ entry cannot be replayed (unknown id, or a message that never decoded)."""


class DeadLettered(ClixWorkerError):
    """The trigger is safely in the DLQ; raised so the task is recorded as failed."""

    def __init__(self, entry_id: str, reason: str) -> None:
        self.entry_id = entry_id
        self.reason = reason
        super().__init__(f"dead-lettered as {entry_id} ({reason})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.entry_id, self.reason))


def _rebuild(cls: type[ClixError], message: str, state: dict[str, Any]) -> ClixError:
    """Unpickle a :class:`ClixError` whatever its subclass's keyword arguments."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def is_transient(exc: BaseException) -> bool:
    """Tenacity's retry predicate: 5xx, 429 and network errors, nothing else."""
    return isinstance(exc, TransientError)


def from_response(response: httpx.Response) -> ClixError | None:
    """Classify an HTTP answer; ``None`` for success (2xx)."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    detail = _clix_message(response)
    message = f"Clix answered {status}: {detail}"
    if status == 429:
        return RateLimited(message, retry_after_s=retry_after_s(response))
    if status >= 500:
        return ServerError(message, status_code=status)
    if status in (401, 403):
        return AuthenticationFailed(
            message + " (check CLIX_PROJECT_ID and CLIX_API_KEY)", status_code=status
        )
    if 400 <= status < 500:
        return Rejected(message, status_code=status)
    # 1xx/3xx: httpx follows no redirects for us, and Clix sends none; an answer
    # we do not understand is not worth resending.
    return Rejected(message, status_code=status)


def from_transport_error(exc: httpx.TransportError) -> NetworkError:
    """Wrap an httpx network error without its request (which carries headers)."""
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return NetworkError(f"network error: {type(exc).__name__}: {exc}", ambiguous=not never_sent)


class Route(enum.Enum):
    """Where a delivery that did not send goes."""

    DEAD_LETTER = "dead_letter"  # write a DLQ entry, then acknowledge
    DUPLICATE = "duplicate"  # another delivery owns the trigger: acknowledge
    REQUEUE = "requeue"  # give the claim back; the broker delivers again


@dataclass(frozen=True, slots=True)
class Decision:
    """The route of one error, with the DLQ reason when it is dead-lettered."""

    route: Route
    reason: str | None = None
    counts_as_delivery: bool = True  # REQUEUE: does it spend the redelivery limit?


def route_for(exc: BaseException, *, systemic: bool = False) -> Decision:
    """The one mapping from an error to what happens to its message.

    ``systemic``: the fleet is failing (the breaker is open, or most of the
    fleet's recent requests failed), so a transient error that spent its budget
    says more about Clix than about the trigger.
    """
    if isinstance(exc, InvalidTrigger):
        return Decision(Route.DEAD_LETTER, "invalid_payload")
    if isinstance(exc, RedeliveryLimit):
        return Decision(Route.DEAD_LETTER, "redelivery_limit")
    if isinstance(exc, ClaimLost):
        return Decision(Route.DUPLICATE)
    if isinstance(exc, AuthenticationFailed | RateLimited | Paused):
        # about the system, not the message: keep it queued, untouched
        return Decision(Route.REQUEUE, counts_as_delivery=False)
    if isinstance(exc, OutOfTime):
        # budget left, time gone: again from the queue; during an outage uncounted,
        # so waiting for Clix never creeps towards the redelivery limit
        return Decision(Route.REQUEUE, counts_as_delivery=not systemic)
    if isinstance(exc, TransientError):
        if systemic:  # an outage, not a poison trigger: wait for Clix in the queue
            return Decision(Route.REQUEUE, counts_as_delivery=False)
        # tenacity has already spent the retry budget when this reaches us
        return Decision(Route.DEAD_LETTER, "retries_exhausted")
    if isinstance(exc, PermanentError):
        return Decision(Route.DEAD_LETTER, "rejected")
    # ClaimBusy, Redis errors, bugs: nothing is wrong with the trigger itself
    return Decision(Route.REQUEUE)


def _clix_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        for field in ("error", "message", "detail"):
            if isinstance(body.get(field), str):
                return str(body[field])[:200]
    return str(body)[:200]
