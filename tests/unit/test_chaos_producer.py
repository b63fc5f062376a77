"""The chaos run's producer retries an enqueue that raised, as application code does."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import redis

from bench.chaos_producer import RETRY_MAX_S, enqueue_through_faults
from tasks.errors import InvalidTrigger

TRIGGER = {"campaign_id": "c", "idempotency_key": "k1"}


class _Outage:
    """An enqueue that raises ``failures`` times, then returns; a clock its sleeps move."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        self.now = 0.0
        self.sleeps: list[float] = []

    def enqueue(self, **trigger: Any) -> str:
        self.calls.append(trigger)
        if len(self.calls) <= self.failures:
            raise redis.ConnectionError("Connection reset by peer")
        return "queued"

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def run(self, give_up_s: float) -> tuple[int | None, collections.Counter[str]]:
        """Enqueue TRIGGER through this outage; the calls it took and the errors seen."""
        errors: collections.Counter[str] = collections.Counter()
        calls = enqueue_through_faults(
            TRIGGER,
            give_up_s=give_up_s,
            errors=errors,
            enqueue=self.enqueue,
            sleep=self.sleep,
            clock=lambda: self.now,
        )
        return calls, errors


def test_an_enqueue_that_raised_is_called_again_with_the_same_trigger() -> None:
    outage = _Outage(failures=2)
    calls, errors = outage.run(give_up_s=90)
    assert calls == 3
    assert outage.calls == [TRIGGER] * 3
    assert errors == {"ConnectionError": 2}
    assert outage.sleeps == [0.1, 0.2]  # backing off


def test_a_trigger_is_given_up_when_its_budget_is_spent() -> None:
    outage = _Outage(failures=1000)
    calls, _ = outage.run(give_up_s=10)
    assert calls is None
    assert outage.now <= 10
    assert max(outage.sleeps) == RETRY_MAX_S


def test_an_invalid_trigger_stops_the_producer_instead_of_being_retried() -> None:
    def invalid(**_: Any) -> None:
        raise InvalidTrigger(["campaign_id: must be 1-255 characters, got 0"])

    with pytest.raises(InvalidTrigger):
        enqueue_through_faults(TRIGGER, give_up_s=90, errors=collections.Counter(), enqueue=invalid)
