"""Scheduled, cancelled and duplicate deliveries, and the attempt history, on fakeredis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from config.keys import Scope
from tasks.cancel import Canceller
from tasks.delivery import EarlyCopy
from tasks.errors import DeadLettered
from tasks.history import Attempt, AttemptHistory, worker_tag
from tasks.idempotency import ClaimState, new_owner
from tasks.lookup import look_up
from tasks.schedule import ScheduleStore

Pipe = Callable[..., Any]

KWARGS: dict[str, Any] = {"campaign_id": "camp-1", "idempotency_key": "order-1"}
FAR_FUTURE_MS = 4_000_000_000_000


def scope_of(p: Any) -> Scope:
    return Scope(p.ctx.settings.clix_project_id, "camp-1", "order-1")


def schedule_of(p: Any) -> ScheduleStore:
    return ScheduleStore(p.ctx.conn, p.ctx.store.keys, ttl_s=3_600)


def canceller_of(p: Any) -> Canceller:
    return Canceller(p.ctx.conn, p.ctx.store.keys, ttl_s=3_600)


# --- duplicates learn the first result ---------------------------------------------------


def test_a_duplicate_returns_the_originals_trigger_id_once_it_commits(pipeline: Pipe) -> None:
    holder = new_owner("task-original")

    def original_commits(number: int, _: float) -> None:
        if number == 2:
            p.ctx.store.commit(scope_of(p), holder, "trg-original")

    p = pipeline(on_delivery_sleep=original_commits, clix_duplicate_wait_s=3.0)
    p.ctx.store.claim(scope_of(p), holder)
    result = p.run(KWARGS, task_id="task-copy")
    assert result == {"trigger_id": "trg-original", "deduplicated": True}
    assert p.clix.requests == []


# --- scheduled ---------------------------------------------------------------------------


def test_another_message_with_a_scheduled_key_sends_nothing(pipeline: Pipe) -> None:
    p = pipeline(200)
    schedule_of(p).schedule(KWARGS, send_at_ms=FAR_FUTURE_MS, task_id="task-scheduled")
    result = p.run(KWARGS, task_id="task-now")
    assert result == {"trigger_id": None, "deduplicated": True, "state": "scheduled"}
    assert p.clix.requests == []


def test_the_scheduled_message_before_its_time_is_dropped_without_a_result(
    pipeline: Pipe,
) -> None:
    p = pipeline(200)
    schedule_of(p).schedule(KWARGS, send_at_ms=FAR_FUTURE_MS, task_id="task-scheduled")
    with pytest.raises(EarlyCopy):
        p.run(KWARGS, task_id="task-scheduled")
    assert p.clix.requests == []


def test_the_scheduled_message_sends_once_it_is_due(pipeline: Pipe) -> None:
    p = pipeline(200)
    schedule = schedule_of(p)
    schedule.schedule(KWARGS, send_at_ms=1_000, task_id="task-scheduled")  # long due
    _, [due] = schedule.take(10, 3_000)
    assert p.run(due.kwargs, task_id=due.task_id) == {"trigger_id": "trg-1", "deduplicated": False}
    assert len(p.clix.requests) == 1


# --- cancel ------------------------------------------------------------------------------


def test_a_cancelled_scheduled_trigger_is_never_taken_nor_sent(pipeline: Pipe) -> None:
    p = pipeline(200)
    schedule_of(p).schedule(KWARGS, send_at_ms=1_000, task_id="task-scheduled")
    outcome = canceller_of(p).cancel("camp-1", "order-1", [p.ctx.settings.clix_project_id])
    assert (outcome.outcome, outcome.was, outcome.cancelled) == ("cancelled", "scheduled", True)
    assert schedule_of(p).take(10, 3_000)[1] == []
    result = p.run(KWARGS, task_id="task-scheduled")  # a copy already published
    assert result == {"trigger_id": None, "deduplicated": True, "state": "cancelled"}
    assert p.clix.requests == []
    assert look_up(p.ctx.store, scope_of(p)).state == "cancelled"


def test_a_queued_trigger_cancelled_is_acknowledged_without_a_request(pipeline: Pipe) -> None:
    p = pipeline(200)
    p.ctx.pending.record([KWARGS])
    outcome = canceller_of(p).cancel("camp-1", "order-1", [p.ctx.settings.clix_project_id])
    assert (outcome.outcome, outcome.was) == ("cancelled", "queued")
    assert not p.ctx.pending.exists("camp-1", "order-1")  # the reconciler has nothing to redo
    assert p.run(KWARGS)["state"] == "cancelled"
    assert p.clix.requests == []


def test_cancel_after_the_claim_is_too_late_and_the_delivery_goes_on(pipeline: Pipe) -> None:
    p = pipeline(200)
    p.ctx.pending.record([KWARGS])
    project = p.ctx.settings.clix_project_id
    claim = p.ctx.store.claim(scope_of(p), new_owner("task-1"))
    assert claim.state is ClaimState.CLAIMED
    outcome = canceller_of(p).cancel("camp-1", "order-1", [project])
    assert (outcome.outcome, outcome.cancelled) == ("in_flight", False)
    assert p.ctx.pending.exists("camp-1", "order-1")


def test_cancel_of_a_done_trigger_says_done(pipeline: Pipe) -> None:
    p = pipeline(200)
    p.run(KWARGS)
    outcome = canceller_of(p).cancel("camp-1", "order-1", [p.ctx.settings.clix_project_id])
    assert (outcome.outcome, outcome.cancelled) == ("done", False)
    assert "done" in outcome.message


def test_cancel_finds_the_fleets_projects_by_itself(pipeline: Pipe) -> None:
    p = pipeline(200)
    p.run(KWARGS)
    p.ctx.conn.sadd(p.ctx.store.keys.projects, p.ctx.settings.clix_project_id)
    assert canceller_of(p).cancel("camp-1", "order-1").outcome == "done"


# --- attempt history ---------------------------------------------------------------------


def test_every_attempt_of_a_trigger_that_needed_three_is_in_its_history(pipeline: Pipe) -> None:
    p = pipeline(503, httpx.ConnectError("refused"), 200, clix_max_attempts=3)
    assert p.run(KWARGS)["deduplicated"] is False
    state = look_up(p.ctx.store, scope_of(p))
    attempts = state.to_json("camp-1", "order-1", history=True)["attempts"]
    assert [a["status"] for a in attempts] == [503, "network", 200]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert attempts[1]["error"] == "ConnectError"
    fields = {"attempt", "at", "status", "latency_ms", "error", "worker"}
    assert all(set(a) == fields for a in attempts)
    assert {a["worker"] for a in attempts} == {worker_tag()}  # shown by name
    # a done trigger is remembered by its done record alone: the history is in it,
    # the worker as a short id
    assert not p.ctx.conn.exists(p.ctx.store.keys.meta(scope_of(p)))
    stored = p.ctx.conn.get(p.ctx.store.keys.done(scope_of(p))).decode()
    assert stored.startswith(state.trigger_id + "|")
    assert worker_tag() not in stored
    assert p.ctx.store.status(scope_of(p)).trigger_id == state.trigger_id


def test_a_dead_lettered_trigger_carries_its_attempts(pipeline: Pipe) -> None:
    p = pipeline(503, 503, 503, clix_max_attempts=3)
    with pytest.raises(DeadLettered) as caught:
        p.run(KWARGS)
    entry = p.ctx.dlq.get(caught.value.entry_id)
    assert entry is not None
    assert [a["status"] for a in entry["history"]] == [503, 503, 503]


def test_the_history_keeps_the_last_entries_only_and_stays_small(pipeline: Pipe) -> None:
    p = pipeline()
    history = AttemptHistory(p.ctx.conn, p.ctx.store.keys, cap=20, ttl_s=3_600)
    for number in range(25):
        history.record(scope_of(p), Attempt(number, 1_800_000_000_000, "503", 40, "w1:42"))
    kept = history.read(scope_of(p))
    assert [a.number for a in kept] == list(range(5, 25))
    one = Attempt(1, 1_800_000_000_040, "200", 87, "2s")  # a typical trigger's whole history
    assert len(one.encode()) <= 20
    assert Attempt.decode(one.encode()) == one


def test_a_history_of_zero_keeps_nothing(pipeline: Pipe) -> None:
    p = pipeline(503, 200, clix_attempt_history=0)
    p.run(KWARGS)
    assert look_up(p.ctx.store, scope_of(p)).attempts == []


def test_a_repeated_record_is_not_counted_twice(pipeline: Pipe) -> None:
    p = pipeline()
    history = AttemptHistory(p.ctx.conn, p.ctx.store.keys, cap=20, ttl_s=3_600)
    attempt = Attempt(2, 1_800_000_000_000, "network", 10, "w1:42", "ReadTimeout")
    history.record(scope_of(p), attempt)
    history.record(scope_of(p), attempt)  # the client repeated a script whose reply was lost
    assert history.read(scope_of(p)) == [attempt]


def test_a_repeated_commit_with_a_history_still_answers_committed(pipeline: Pipe) -> None:
    p = pipeline()
    owner = new_owner("task-1")
    p.ctx.store.claim(scope_of(p), owner)
    entry = Attempt(1, 1_800_000_000_040, "200", 87, "2s").encode()
    assert p.ctx.store.commit(scope_of(p), owner, "trg-1", attempt=entry, history_cap=20)
    assert p.ctx.store.commit(scope_of(p), owner, "trg-1", attempt=entry, history_cap=20)
    assert not p.ctx.store.commit(scope_of(p), owner, "trg-2", attempt=entry, history_cap=20)
    assert p.ctx.store.status(scope_of(p)).trigger_id == "trg-1"
