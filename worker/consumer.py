"""A Celery consumer that dead-letters messages it cannot turn into a task.

By default Celery logs and *acknowledges* a message whose body cannot be
decoded, and rejects (drops) one that is malformed or names an unknown task:
the message is gone. Here each of those first lands in the dead-letter queue
with reason ``invalid_payload`` and its raw body, then is acknowledged; if the
DLQ cannot be written the message goes back to the queue instead.

Its blueprint adds :class:`worker.broker_dead_letters.BrokerDeadLetterDrain`:
on RabbitMQ, what the broker dead-letters at its delivery limit reaches the DLQ
too.

It also publishes task events (what Flower shows) in batches: Celery buffers
them and flushes at the event loop's next turn, about one publish to the broker
per trigger, from the one thread that also fetches and acknowledges every
message; here a buffered event waits up to :data:`TASK_EVENT_FLUSH_S` for
company, up to :data:`TASK_EVENT_BATCH` events a publish.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from celery.worker.consumer import Consumer

from tasks.context import current
from tasks.dlq import DeadLetterQueue

__all__ = [
    "TASK_EVENT_BATCH",
    "TASK_EVENT_FLUSH_S",
    "DeadLetteringConsumer",
    "raw_text",
    "unless_connection_replaced",
]

logger = logging.getLogger("clix.consumer")

#: Seconds a buffered task event may wait before the batch holding it is
#: published: monitoring lags by at most this.
TASK_EVENT_FLUSH_S = 0.1
#: Task events a batch may hold before it is published at once, by whichever
#: thread sent the last one (Celery's default is 24: a publish every 8 triggers).
TASK_EVENT_BATCH = 1000


def raw_text(body: object) -> str:
    """A message body as text: UTF-8 when it is, else ``base64:...``."""
    if isinstance(body, str):
        return body
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(data).decode("ascii")
    return repr(body)


def unless_connection_replaced(settle: Callable[..., Any]) -> Callable[..., Any]:
    """``settle`` (a message's ``ack_log_error``, ``reject_log_error``), unless its link is gone.

    After the broker connection was lost and replaced (a broker restart, a
    Sentinel failover), a delivery that ends on the old connection cannot settle
    its message: kombu's Redis transport raises ``AttributeError`` from the
    closed channel (``'NoneType' object has no attribute 'hostname'``) in the
    event loop, which Celery takes for an unrecoverable error and stops the
    whole worker. The delivery's outcome is in the ledger already; the message
    comes back after the visibility timeout and is settled then.
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return settle(*args, **kwargs)
        except AttributeError:
            channel = getattr(getattr(settle, "__self__", None), "channel", None)
            transport = getattr(channel, "connection", None)
            replaced = getattr(channel, "closed", False) or getattr(transport, "client", 1) is None
            if not replaced:
                raise
            logger.warning(
                "a message of a broker connection since replaced could not be settled: "
                "it returns after the visibility timeout"
            )
            return None

    return run


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, with poison messages routed to the DLQ instead of dropped."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        """Celery's consumer steps, plus the drain of RabbitMQ's parking queue."""

        default_steps: ClassVar[list[str]] = [
            *Consumer.Blueprint.default_steps,
            "worker.broker_dead_letters:BrokerDeadLetterDrain",
        ]

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """The broker went away: close what is left of the connection, then reconnect.

        kombu's Redis transport can fail to close a channel whose connection is
        already gone (``'NoneType' object has no attribute 'hostname'`` while
        restoring unacknowledged messages): Celery then treats the whole worker
        as unrecoverable and exits, seen here when the broker restarts during a
        drain. The connection is dropped either way and the messages it held
        come back with the visibility timeout, so the worker reconnects instead.
        """
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError:
            logger.warning(
                "the lost broker connection could not be closed cleanly; reconnecting anyway",
                exc_info=True,
            )

    #: a flush of the task event buffer is due (set from any thread, cleared by the loop)
    _event_flush_due = False

    def on_send_event_buffered(self) -> None:
        """A task event was buffered (in a pool thread or the loop): flush it soon, in a batch."""
        if self.hub is None:
            super().on_send_event_buffered()
            return
        if self._event_flush_due:
            return  # the flush already due takes this event along
        self._event_flush_due = True
        dispatcher = self.event_dispatcher  # a new one after each reconnection
        if dispatcher is not None and dispatcher.buffer_limit < TASK_EVENT_BATCH:
            dispatcher.buffer_limit = TASK_EVENT_BATCH
        # the loop thread owns the timer; two threads arming it both is harmless
        self.hub.call_soon(self.hub.call_later, TASK_EVENT_FLUSH_S, self._flush_due_events)

    def _flush_due_events(self) -> None:
        self._event_flush_due = False  # an event buffered from now on arms a new flush
        self._flush_events()

    def shutdown(self) -> None:
        """Publish the task events still buffered, then shut down as Celery does."""
        try:
            self._flush_events()
        except Exception:  # monitoring only: shutting down matters more
            logger.debug("could not publish the last task events", exc_info=True)
        super().shutdown()

    def call_soon_ack(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        """Schedule a message's ack or reject (guarded: :func:`unless_connection_replaced`)."""
        return super().call_soon_ack(unless_connection_replaced(p), *args, **kwargs)

    def _dead_letter_queue(self) -> DeadLetterQueue:
        # the main process's context: one Redis pool shared with the breaker watch
        return current().dlq

    def _dead_letter(self, message: Any, error: str) -> None:
        headers = getattr(message, "headers", None) or {}
        try:
            dlq = self._dead_letter_queue()
            entry = dlq.new_entry(
                reason="invalid_payload",
                error=error,
                trigger=None,
                task_id=headers.get("id") if isinstance(headers.get("id"), str) else None,
                project_id=current().settings.clix_project_id,
                raw=raw_text(message.body),
            )
            dlq.add(entry)
        except Exception:
            logger.exception("could not dead-letter a poison message; returning it to the queue")
            message.reject(requeue=True)
            return
        logger.error("poison message dead-lettered as %s (invalid_payload): %s", entry["id"], error)
        message.ack()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """The body could not be decoded (bad JSON, unknown content type)."""
        exchange = (getattr(message, "delivery_info", None) or {}).get("exchange") or ""
        if str(exchange).endswith("pidbox"):
            # remote-control traffic, not a trigger: Celery's own handling
            super().on_decode_error(message, exc)
            return
        self._dead_letter(message, f"message could not be decoded: {type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """A message without a task name."""
        self._dead_letter(message, "message names no task (not a Celery task message)")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A message for a task this worker does not have."""
        name = (getattr(message, "headers", None) or {}).get("task")
        self._dead_letter(message, f"unknown task {name!r} on the trigger queue")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A task message whose structure is broken."""
        self._dead_letter(message, f"malformed task message: {type(exc).__name__}: {exc}")
