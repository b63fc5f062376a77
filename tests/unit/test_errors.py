"""Classification of Clix answers and the one mapping from an error to its route."""

from __future__ import annotations

import httpx
import pytest
import redis

from tasks.errors import (
    AuthenticationFailed,
    BreakerOpen,
    ClaimBusy,
    ClaimLost,
    ClixError,
    DeadLettered,
    InvalidTrigger,
    NetworkError,
    OutOfTime,
    Paused,
    PermanentError,
    RateLimited,
    RateLimitWaitTooLong,
    RedeliveryLimit,
    Rejected,
    Route,
    ServerError,
    TransientError,
    from_response,
    from_transport_error,
    is_transient,
    route_for,
)

REQUEST = httpx.Request("POST", "https://clix.test/api/v1/campaigns/c1:trigger")


def answer(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=REQUEST, **kwargs)  # type: ignore[arg-type]


# --- from_response --------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_success(status: int) -> None:
    assert from_response(answer(status, json={"trigger_id": "t1"})) is None


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_final_4xx_is_rejected_with_its_status(status: int) -> None:
    error = from_response(answer(status, json={"error": "campaign is not API-triggered"}))
    assert type(error) is Rejected
    assert error.status_code == status
    assert str(error) == f"Clix answered {status}: campaign is not API-triggered"
    assert not is_transient(error)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_authentication_failures_naming_the_variables(status: int) -> None:
    error = from_response(answer(status, json={"message": "bad key"}))
    assert isinstance(error, AuthenticationFailed)
    assert isinstance(error, Rejected)
    assert error.status_code == status
    assert "CLIX_PROJECT_ID" in str(error)
    assert "CLIX_API_KEY" in str(error)
    assert not is_transient(error)


def test_429_with_retry_after_carries_the_wait() -> None:
    error = from_response(answer(429, headers={"Retry-After": "2"}, json={"error": "slow down"}))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 2.0
    assert error.status_code == 429
    assert is_transient(error)


def test_429_with_fractional_retry_after_keeps_the_fraction() -> None:
    error = from_response(answer(429, headers={"Retry-After": "0.25"}))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 0.25


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"Retry-After": "-5"}, 0.0),
    ],
)
def test_429_without_usable_retry_after(headers: dict[str, str], expected: float | None) -> None:
    error = from_response(answer(429, headers=headers))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == expected
    assert is_transient(error)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_a_transient_server_error(status: int) -> None:
    error = from_response(answer(status, text="upstream down"))
    assert type(error) is ServerError
    assert error.status_code == status
    assert str(error) == f"Clix answered {status}: upstream down"
    assert is_transient(error)


def test_message_falls_back_to_reason_phrase_for_an_empty_body() -> None:
    assert str(from_response(answer(502))) == "Clix answered 502: Bad Gateway"


def test_message_of_a_long_body_is_cut_to_200_chars() -> None:
    error = from_response(answer(500, json={"detail": "x" * 1000}))
    assert str(error) == "Clix answered 500: " + "x" * 200


def test_3xx_is_not_followed_and_not_resent() -> None:
    error = from_response(answer(302, headers={"Location": "https://elsewhere.test"}))
    assert isinstance(error, Rejected)
    assert not is_transient(error)


# --- is_transient ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ServerError("x", status_code=503),
        RateLimited("x", retry_after_s=None),
        NetworkError("x", ambiguous=True),
        NetworkError("x", ambiguous=False),
    ],
)
def test_transient_errors_are_retried(error: Exception) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        Rejected("x", status_code=400),
        AuthenticationFailed("x", status_code=401),
        PermanentError("x"),
        InvalidTrigger(["campaign_id: bad"]),
        ClaimLost("x"),
        ClaimBusy("x"),
        RedeliveryLimit("x"),
        redis.ConnectionError("down"),
        RuntimeError("bug"),
        httpx.ConnectError("refused"),
    ],
)
def test_everything_else_is_not_retried(error: Exception) -> None:
    assert not is_transient(error)


# --- NetworkError.ambiguous -----------------------------------------------------------


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("busy")]
)
def test_errors_before_the_request_left_are_not_ambiguous(exc: httpx.TransportError) -> None:
    error = from_transport_error(exc)
    assert isinstance(error, NetworkError)
    assert error.ambiguous is False
    assert error.status_code is None
    assert is_transient(error)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.ReadError("reset"),
        httpx.WriteTimeout("write timed out"),
    ],
)
def test_errors_after_the_request_may_have_left_are_ambiguous(exc: httpx.TransportError) -> None:
    error = from_transport_error(exc)
    assert error.ambiguous is True
    assert is_transient(error)


def test_network_error_text_names_the_httpx_error() -> None:
    error = from_transport_error(httpx.ReadTimeout("timed out"))
    assert str(error) == "network error: ReadTimeout: timed out"


# --- route_for ------------------------------------------------------------------------


def test_invalid_trigger_is_dead_lettered_as_invalid_payload() -> None:
    decision = route_for(InvalidTrigger(["campaign_id: bad"]))
    assert (decision.route, decision.reason) == (Route.DEAD_LETTER, "invalid_payload")


@pytest.mark.parametrize(
    "error",
    [
        ServerError("x", status_code=503),
        NetworkError("x", ambiguous=True),
        NetworkError("x", ambiguous=False),
        TransientError("x"),
    ],
)
def test_transient_error_that_reaches_routing_is_retries_exhausted(error: ClixError) -> None:
    decision = route_for(error)
    assert (decision.route, decision.reason) == (Route.DEAD_LETTER, "retries_exhausted")


def test_a_retry_cut_short_by_the_deadline_requeues_counted_or_uncounted_in_an_outage() -> None:
    error = OutOfTime(ServerError("x", status_code=503))
    assert not is_transient(error)  # not resent within the delivery: no time is left
    decision = route_for(error)
    assert (decision.route, decision.reason, decision.counts_as_delivery) == (
        Route.REQUEUE,
        None,
        True,
    )
    assert route_for(error, systemic=True).counts_as_delivery is False


def test_429_that_outlived_its_wait_budget_requeues_uncounted() -> None:
    # too many 429s say the fleet is too fast, not that the trigger is bad
    decision = route_for(RateLimited("x", retry_after_s=1.0))
    assert (decision.route, decision.reason) == (Route.REQUEUE, None)
    assert decision.counts_as_delivery is False


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_rejected_is_dead_lettered_as_rejected(status: int) -> None:
    decision = route_for(Rejected("x", status_code=status))
    assert (decision.route, decision.reason) == (Route.DEAD_LETTER, "rejected")


@pytest.mark.parametrize("status", [401, 403])
def test_authentication_failure_is_not_resent_and_requeues_uncounted(status: int) -> None:
    # never resent within a delivery, never dead-lettered: the credentials are
    # broken, not the trigger, so it waits in the queue behind the open breaker
    error = AuthenticationFailed("bad key", status_code=status)
    assert not is_transient(error)
    decision = route_for(error)
    assert (decision.route, decision.reason) == (Route.REQUEUE, None)
    assert decision.counts_as_delivery is False


@pytest.mark.parametrize(
    "error",
    [
        BreakerOpen("circuit breaker open (auth)"),
        RateLimitWaitTooLong("no request slot within 60 s"),
        Paused("paused"),
    ],
)
def test_paused_system_requeues_the_message_uncounted(error: Paused) -> None:
    assert not is_transient(error)
    decision = route_for(error)
    assert (decision.route, decision.reason) == (Route.REQUEUE, None)
    assert decision.counts_as_delivery is False


def test_redelivery_limit_is_dead_lettered_as_redelivery_limit() -> None:
    decision = route_for(RedeliveryLimit("delivered 6 times"))
    assert (decision.route, decision.reason) == (Route.DEAD_LETTER, "redelivery_limit")


def test_claim_lost_is_acknowledged_as_duplicate() -> None:
    decision = route_for(ClaimLost("taken over"))
    assert (decision.route, decision.reason) == (Route.DUPLICATE, None)


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("down"),
        redis.TimeoutError("slow"),
        RuntimeError("a bug"),
        ClaimBusy("copy still running"),
        KeyError("x"),
    ],
)
def test_infrastructure_errors_requeue_the_message_counted(error: BaseException) -> None:
    decision = route_for(error)
    assert (decision.route, decision.reason) == (Route.REQUEUE, None)
    # a message that keeps failing its worker must reach the redelivery limit
    assert decision.counts_as_delivery is True


def test_dead_lettered_names_entry_and_reason() -> None:
    error = DeadLettered("0001-abc", "rejected")
    assert (error.entry_id, error.reason) == ("0001-abc", "rejected")
    assert str(error) == "dead-lettered as 0001-abc (rejected)"
