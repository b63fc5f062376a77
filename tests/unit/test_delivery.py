"""One delivery of ``trigger_campaign`` end to end, in-process.

The real :class:`tasks.trigger.Delivery` runs against a
:class:`tasks.context.WorkerContext` wired to fakeredis and to a Clix client
whose transport is an ``httpx.MockTransport`` (the ``pipeline`` fixture).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import fakeredis
import httpx
import pytest
import redis

from config.keys import Scope
from tasks.errors import DeadLettered
from tasks.idempotency import ClaimState, new_owner
from tasks.trigger import REQUEUE_PAUSE_S, RequeueMessage

#: the ``pipeline`` fixture: ``pipeline(*steps, then=, on_sleep=, **settings)`` -> Pipeline
Pipe = Callable[..., Any]

KWARGS: dict[str, Any] = {
    "campaign_id": "camp-1",
    "idempotency_key": "order-1",
    "properties": {"order_id": "ORD-1", "item_count": 3},
}


def scope_of(p: Any, kwargs: dict[str, Any] = KWARGS) -> Scope:
    return Scope(p.ctx.settings.clix_project_id, kwargs["campaign_id"], kwargs["idempotency_key"])


def dead_letter(p: Any, kwargs: dict[str, Any] = KWARGS, **options: Any) -> dict[str, Any]:
    """Run a delivery that must dead-letter; return its stored DLQ entry."""
    with pytest.raises(DeadLettered) as caught:
        p.run(kwargs, **options)
    entry = p.ctx.dlq.get(caught.value.entry_id)
    assert entry is not None
    assert entry["reason"] == caught.value.reason
    return dict(entry)


def ambiguous_count(fake_redis: fakeredis.FakeRedis, p: Any) -> int:
    value = fake_redis.hget(p.ctx.store.keys.stats, "ambiguous_duplicates")
    return int(value) if value is not None else 0


# --- success and deduplication --------------------------------------------------------


def test_success_commits_and_returns_the_trigger_id(pipeline: Pipe) -> None:
    p = pipeline(200)
    assert p.run(KWARGS) == {"trigger_id": "trg-1", "deduplicated": False}
    status = p.ctx.store.status(scope_of(p))
    assert (status.state, status.trigger_id) == ("done", "trg-1")
    (request,) = p.clix.requests
    assert json.loads(request.content) == {"properties": {"order_id": "ORD-1", "item_count": 3}}
    assert request.url.path == "/api/v1/campaigns/camp-1:trigger"
    assert p.ctx.dlq.depth() == 0


def test_second_message_with_same_key_sends_nothing(pipeline: Pipe) -> None:
    p = pipeline(200)
    first = p.run(KWARGS, task_id="task-1")
    second = p.run(KWARGS, task_id="task-2")
    assert second == {"trigger_id": first["trigger_id"], "deduplicated": True}
    assert len(p.clix.requests) == 1


def test_redelivered_copy_of_a_done_message_sends_nothing(pipeline: Pipe) -> None:
    p = pipeline(200)
    p.run(KWARGS, task_id="task-1")
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": "trg-1", "deduplicated": True}
    assert len(p.clix.requests) == 1


def test_same_key_in_another_campaign_is_a_different_trigger(pipeline: Pipe) -> None:
    p = pipeline(200, 200)
    p.run(KWARGS, task_id="task-1")
    other = p.run({**KWARGS, "campaign_id": "camp-2"}, task_id="task-2")
    assert other == {"trigger_id": "trg-2", "deduplicated": False}


def test_message_finding_another_message_in_flight_is_a_duplicate(pipeline: Pipe) -> None:
    p = pipeline()
    holder = new_owner("task-other")
    p.ctx.store.claim(scope_of(p), holder)
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": None, "deduplicated": True}
    assert p.clix.requests == []
    assert p.ctx.store.release(scope_of(p), holder) is True  # their claim is untouched


def test_message_whose_key_is_dead_lettered_sends_nothing(pipeline: Pipe) -> None:
    p = pipeline(400)
    dead_letter(p, task_id="task-1")
    assert p.run(KWARGS, task_id="task-2") == {"trigger_id": None, "deduplicated": True}
    assert len(p.clix.requests) == 1


# --- invalid input --------------------------------------------------------------------


def test_invalid_kwargs_are_dead_lettered_without_a_request(pipeline: Pipe) -> None:
    p = pipeline()
    bad = {**KWARGS, "campaign_id": "camp/1"}
    entry = dead_letter(p, bad, task_id="task-1")
    assert entry["reason"] == "invalid_payload"
    assert entry["error"].startswith("invalid trigger: campaign_id: ")
    assert entry["trigger"] == bad
    assert entry["campaign_id"] == "camp/1"
    assert entry["status_code"] is None
    assert entry["attempts"] == 0
    assert entry["task_id"] == "task-1"
    assert p.clix.requests == []


def test_positional_args_are_dead_lettered_with_the_raw_message(pipeline: Pipe) -> None:
    p = pipeline()
    entry = dead_letter(p, {}, args=("camp-1", "order-1"))
    assert entry["reason"] == "invalid_payload"
    assert "keyword arguments only" in entry["error"]
    assert json.loads(entry["raw"]) == {"args": ["camp-1", "order-1"], "kwargs": {}}
    assert p.clix.requests == []


def test_invalid_payload_leaves_no_ledger_state(pipeline: Pipe) -> None:
    p = pipeline(200)
    dead_letter(p, {**KWARGS, "audience": {"broadcast": "yes"}})
    # the same key, sent correctly, still goes out
    assert p.run(KWARGS, task_id="task-2")["deduplicated"] is False


# --- Clix says no ---------------------------------------------------------------------


def test_400_is_dead_lettered_as_rejected_after_one_attempt(pipeline: Pipe) -> None:
    p = pipeline(400, then=200)
    entry = dead_letter(p, task_id="task-1")
    assert entry["reason"] == "rejected"
    assert entry["status_code"] == 400
    assert entry["attempts"] == 1
    assert entry["error"] == "Clix answered 400: scripted status 400"
    assert entry["trigger"] == KWARGS
    assert entry["project_id"] == p.ctx.settings.clix_project_id
    assert len(p.clix.requests) == 1
    assert p.ctx.store.status(scope_of(p)).dead_entry_id == entry["id"]


def test_401_is_sent_once_and_names_the_credentials_to_check(pipeline: Pipe) -> None:
    p = pipeline(401)
    entry = dead_letter(p, task_id="task-401")
    assert (entry["reason"], entry["status_code"], entry["attempts"]) == ("rejected", 401, 1)
    assert "CLIX_API_KEY" in entry["error"]
    assert len(p.clix.requests) == 1


def test_503_forever_is_dead_lettered_as_retries_exhausted(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(then=503, clix_max_attempts=3)
    entry = dead_letter(p, task_id="task-1")
    assert entry["reason"] == "retries_exhausted"
    assert entry["attempts"] == 3
    assert entry["status_code"] == 503
    assert len(p.clix.requests) == 3
    assert len(p.clix.sleeps.calls) == 2
    scope = scope_of(p)
    keys = p.ctx.store.keys
    assert fake_redis.exists(keys.lease(scope)) == 0
    assert fake_redis.get(keys.dead(scope)) == entry["id"].encode()
    assert p.ctx.store.claim(scope, new_owner("task-9")).state is ClaimState.DEAD


def test_network_errors_forever_are_retries_exhausted_with_null_status(pipeline: Pipe) -> None:
    p = pipeline(then=httpx.ConnectError("connection refused"), clix_max_attempts=2)
    entry = dead_letter(p)
    assert entry["reason"] == "retries_exhausted"
    assert entry["status_code"] is None
    assert entry["attempts"] == 2
    assert entry["error"].startswith("network error: ConnectError")


def test_503_then_200_succeeds_within_one_delivery(pipeline: Pipe) -> None:
    p = pipeline(503, 503, 200, clix_max_attempts=3)
    assert p.run(KWARGS) == {"trigger_id": "trg-3", "deduplicated": False}
    assert p.ctx.store.meta(scope_of(p))["attempts"] == "3"


def test_429_is_waited_out_and_then_sent(pipeline: Pipe) -> None:
    p = pipeline(httpx.Response(429, headers={"Retry-After": "1.5"}), 200)
    assert p.run(KWARGS)["trigger_id"] == "trg-2"
    assert p.clix.sleeps.calls == [1.5]


def test_dlq_attempts_count_requests_of_every_delivery(pipeline: Pipe) -> None:
    p = pipeline(400)
    scope = scope_of(p)
    earlier = new_owner("task-1")
    p.ctx.store.claim(scope, earlier)
    for _ in range(2):  # an earlier delivery sent twice, then gave the claim back
        p.ctx.store.renew(scope, earlier)
        p.ctx.store.not_sent(scope, earlier)
    p.ctx.store.release(scope, earlier)
    entry = dead_letter(p, task_id="task-1")
    assert entry["attempts"] == 3


# --- redelivery limit -----------------------------------------------------------------


def redeliver(p: Any, times: int, task_id: str = "task-1") -> None:
    """Deliveries that claimed the key and then vanished (their claims given back)."""
    for _ in range(times):
        owner = new_owner(task_id)
        assert p.ctx.store.claim(scope_of(p), owner).state is ClaimState.CLAIMED
        p.ctx.store.release(scope_of(p), owner)


def test_delivery_over_the_redelivery_limit_is_dead_lettered_without_a_request(
    pipeline: Pipe,
) -> None:
    p = pipeline(clix_redelivery_limit=3)
    redeliver(p, 3)
    entry = dead_letter(p, task_id="task-1")
    assert entry["reason"] == "redelivery_limit"
    assert "delivered 4 times (limit 3)" in entry["error"]
    assert p.clix.requests == []
    assert p.ctx.store.claim(scope_of(p), new_owner("task-2")).state is ClaimState.DEAD


def test_delivery_at_the_redelivery_limit_still_sends(pipeline: Pipe) -> None:
    p = pipeline(200, clix_redelivery_limit=3)
    redeliver(p, 2)
    assert p.run(KWARGS, task_id="task-1")["deduplicated"] is False


# --- a copy of the same message -------------------------------------------------------


def test_copy_waits_while_the_first_delivery_runs_and_returns_its_result(
    pipeline: Pipe, sleep_recorder: Callable[..., Any]
) -> None:
    p = pipeline()
    scope = scope_of(p)
    first = new_owner("task-1")
    p.ctx.store.claim(scope, first)

    def first_delivery_finishes(call: int, seconds: float) -> None:
        if call == 2:
            p.ctx.store.commit(scope, first, "trg-first")

    sleeps = sleep_recorder(first_delivery_finishes)
    result = p.run(KWARGS, task_id="task-1", sleep=sleeps)
    assert result == {"trigger_id": "trg-first", "deduplicated": True}
    assert len(sleeps.calls) == 2
    assert all(0 < s <= 1.0 for s in sleeps.calls)
    assert p.clix.requests == []


def test_copy_takes_over_when_the_first_deliverys_lease_expires(
    pipeline: Pipe, sleep_recorder: Callable[..., Any], fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(200)
    scope = scope_of(p)
    p.ctx.store.claim(scope, new_owner("task-1"))  # claimed, then died before sending
    sleeps = sleep_recorder(lambda call, s: fake_redis.delete(p.ctx.store.keys.lease(scope)))
    assert p.run(KWARGS, task_id="task-1", sleep=sleeps)["deduplicated"] is False
    assert len(sleeps.calls) == 1
    assert ambiguous_count(fake_redis, p) == 0


def test_take_over_from_a_delivery_that_died_mid_request_is_counted(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(200)
    scope = scope_of(p)
    dead = new_owner("task-1")
    p.ctx.store.claim(scope, dead)
    p.ctx.store.renew(scope, dead)  # it was sending when it was killed
    fake_redis.delete(p.ctx.store.keys.lease(scope))  # its lease ran out
    assert p.run(KWARGS, task_id="task-1")["deduplicated"] is False
    assert ambiguous_count(fake_redis, p) == 1


def test_claim_lost_while_retrying_stops_sending(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    holder = new_owner("task-2")

    def another_delivery_takes_over(call: int, seconds: float) -> None:
        fake_redis.delete(p.ctx.store.keys.lease(scope_of(p)))
        p.ctx.store.claim(scope_of(p), holder)

    p = pipeline(503, then=200, on_sleep=another_delivery_takes_over)
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": None, "deduplicated": True}
    assert len(p.clix.requests) == 1
    assert p.ctx.dlq.depth() == 0
    assert fake_redis.get(p.ctx.store.keys.lease(scope_of(p))) == holder.encode()


# --- our own infrastructure fails -----------------------------------------------------


def test_redis_error_in_the_send_path_requeues_and_releases_the_claim(pipeline: Pipe) -> None:
    p = pipeline(redis.ConnectionError("store went away"))
    with pytest.raises(RequeueMessage, match="ConnectionError: store went away"):
        p.run(KWARGS, task_id="task-1")
    assert p.ctx.store.status(scope_of(p)).state == "unknown"
    assert p.ctx.dlq.depth() == 0
    assert p.sleeps.calls == [REQUEUE_PAUSE_S]
    assert p.ctx.store.claim(scope_of(p), new_owner("task-1")).state is ClaimState.CLAIMED


def test_a_bug_in_the_send_path_requeues_instead_of_dead_lettering(pipeline: Pipe) -> None:
    p = pipeline(RuntimeError("unexpected"))
    with pytest.raises(RequeueMessage, match="RuntimeError"):
        p.run(KWARGS)
    assert p.ctx.dlq.depth() == 0
    assert p.ctx.store.status(scope_of(p)).state == "unknown"


def test_redis_down_after_clix_accepted_requeues_and_the_resend_is_counted(
    pipeline: Pipe, fake_server: fakeredis.FakeServer, fake_redis: fakeredis.FakeRedis
) -> None:
    def accept_while_redis_dies(request: httpx.Request) -> httpx.Response:
        fake_server.connected = False
        return httpx.Response(200, json={"trigger_id": "trg-lost"})

    p = pipeline(accept_while_redis_dies, 200)
    with pytest.raises(RequeueMessage):
        p.run(KWARGS, task_id="task-1")
    fake_server.connected = True
    scope = scope_of(p)
    # nothing recorded as done; the claim could not be given back and will expire
    assert p.ctx.store.status(scope).state == "in_flight"
    fake_redis.delete(p.ctx.store.keys.lease(scope))
    assert p.run(KWARGS, task_id="task-1") == {"trigger_id": "trg-2", "deduplicated": False}
    assert ambiguous_count(fake_redis, p) == 1


def test_redis_down_before_the_claim_requeues_without_sending(
    pipeline: Pipe, fake_server: fakeredis.FakeServer
) -> None:
    p = pipeline()
    fake_server.connected = False
    with pytest.raises(RequeueMessage, match="ConnectionError"):
        p.run(KWARGS)
    assert p.clix.requests == []


# --- ambiguous duplicates -------------------------------------------------------------


def test_read_timeout_then_200_counts_an_ambiguous_duplicate(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(httpx.ReadTimeout("timed out"), 200)
    assert p.run(KWARGS) == {"trigger_id": "trg-2", "deduplicated": False}
    assert ambiguous_count(fake_redis, p) == 1


def test_connect_error_then_200_counts_no_duplicate(
    pipeline: Pipe, fake_redis: fakeredis.FakeRedis
) -> None:
    p = pipeline(httpx.ConnectError("refused"), 503, 200)
    assert p.run(KWARGS)["trigger_id"] == "trg-3"
    assert ambiguous_count(fake_redis, p) == 0


# --- secrets --------------------------------------------------------------------------


def test_api_key_is_never_logged_or_dead_lettered(
    pipeline: Pipe,
    api_key: str,
    fake_redis: fakeredis.FakeRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    p = pipeline(httpx.ReadTimeout("timed out"), 503, 422, 200)
    with pytest.raises(DeadLettered):
        p.run(KWARGS, task_id="task-1")
    with pytest.raises(RequeueMessage):
        pipeline(redis.ConnectionError("down")).run({**KWARGS, "idempotency_key": "o-2"})
    assert p.run({**KWARGS, "idempotency_key": "o-3"})["trigger_id"] == "trg-4"
    assert caplog.records  # the outcomes were logged
    for record in caplog.records:
        assert api_key not in record.getMessage()
        assert api_key not in repr(getattr(record, "clix", ""))
    for key in fake_redis.keys("*"):
        dump = fake_redis.dump(key)
        assert dump is not None
        assert api_key.encode() not in dump
