"""The producer side of scheduling: when a trigger is due, and putting it on the schedule.

``enqueue_trigger(..., send_at=... | delay_s=...)``, ``trigger_campaign.apply_async(
eta=... | countdown=...)`` and ``app.send_task(..., eta=... | countdown=...)`` all end
here: the trigger is validated as usual and written to the schedule in the
store (:mod:`tasks.schedule`), never sent as a Celery ETA message.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from config.keys import KeySpace
from config.settings import Settings
from tasks import context
from tasks.errors import InvalidTrigger
from tasks.schedule import Scheduled, ScheduleStore

__all__ = ["When", "producer_schedule", "schedule_trigger", "when_from"]


class When:
    """A due time: absolute (``send_at_ms``, the caller's clock) or relative (``delay_ms``).

    A relative time is counted from the store's clock when the trigger is scheduled.
    """

    __slots__ = ("delay_ms", "send_at_ms")

    def __init__(self, *, send_at_ms: int | None = None, delay_ms: int = 0) -> None:
        self.send_at_ms = send_at_ms
        self.delay_ms = delay_ms


def _aware_ms(value: Any, name: str) -> int:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise InvalidTrigger([f"{name}: not an ISO-8601 time: {value!r}"]) from None
    if not isinstance(value, dt.datetime):
        raise InvalidTrigger([f"{name}: expected a timezone-aware datetime"])
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTrigger([f"{name}: give a timezone-aware datetime (e.g. with tzinfo=UTC)"])
    return math.ceil(value.timestamp() * 1000)  # never a millisecond early


def _delay_ms(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidTrigger([f"{name}: expected a number of seconds"])
    if value < 0:
        raise InvalidTrigger([f"{name}: must not be negative"])
    return math.ceil(value * 1000)


def when_from(
    *, send_at: Any = None, delay_s: Any = None, eta: Any = None, countdown: Any = None
) -> When | None:
    """The due time given by at most one of the four ways to say it; None for "now"."""
    given = {
        name: value
        for name, value in (
            ("send_at", send_at),
            ("delay_s", delay_s),
            ("eta", eta),
            ("countdown", countdown),
        )
        if value is not None
    }
    if len(given) > 1:
        raise InvalidTrigger([f"give one of {' / '.join(sorted(given))}, not several"])
    if not given:
        return None
    ((name, value),) = given.items()
    if name in ("send_at", "eta"):
        return When(send_at_ms=_aware_ms(value, name))
    return When(delay_ms=_delay_ms(value, name))


def producer_schedule(settings: Settings) -> ScheduleStore:
    """The schedule on the producer's store connection (one pool per process and store)."""
    ledger = context.producer_ledger(settings)
    return ScheduleStore(ledger.redis, KeySpace.of(settings), ttl_s=settings.clix_idempotency_ttl_s)


def schedule_trigger(
    clean: dict[str, Any], when: When, settings: Settings, *, task_id: str | None = None
) -> Scheduled:
    """Put validated kwargs on the schedule; the answer says whether the key was free."""
    return producer_schedule(settings).schedule(
        clean,
        send_at_ms=when.send_at_ms,
        delay_ms=when.delay_ms,
        project_id=settings.clix_project_id,
        task_id=task_id,
    )
