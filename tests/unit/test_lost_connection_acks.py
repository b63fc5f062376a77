"""Settling a message over a broker connection that was replaced must not stop the worker."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from worker.consumer import unless_connection_replaced


class _Message:
    """A kombu message whose channel is open or closed, as kombu's Redis transport leaves it."""

    def __init__(self, *, closed: bool, bug: bool = False) -> None:
        self.bug = bug
        self.channel = SimpleNamespace(
            closed=closed, connection=SimpleNamespace(client=None if closed else object())
        )
        self.acks: list[Any] = []

    def ack_log_error(self, logger: Any, errors: Any) -> None:
        if self.bug:
            raise AttributeError("a bug of ours")
        if self.channel.closed:  # what kombu's Redis transport does on a closed channel
            raise AttributeError("'NoneType' object has no attribute 'hostname'")
        self.acks.append(errors)


def test_an_ack_over_a_replaced_connection_is_logged_and_left_to_the_visibility_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = _Message(closed=True)
    with caplog.at_level(logging.WARNING, logger="clix.consumer"):
        assert unless_connection_replaced(message.ack_log_error)(None, ()) is None
    assert "returns after the visibility timeout" in caplog.text


def test_an_ack_on_a_live_connection_goes_through_and_other_attribute_errors_still_raise() -> None:
    message = _Message(closed=False)
    unless_connection_replaced(message.ack_log_error)(None, ("errors",))
    assert message.acks == [("errors",)]
    live = _Message(closed=False, bug=True)
    with pytest.raises(AttributeError, match="a bug of ours"):
        unless_connection_replaced(live.ack_log_error)(None, ())
