"""Drain what RabbitMQ dead-lettered at its delivery limit into our dead-letter queue.

A quorum queue counts every return of a message (``basic.reject`` with
requeue, a channel that closed) and past ``x-delivery-limit`` removes it: since
RabbitMQ 4.0 at 20 by default, which our uncounted requeues (open breaker, 429
budget spent, Redis down) reach on their own. The trigger queue is therefore
declared with an explicit limit and an at-least-once dead-letter route to a
parking queue (:func:`config.celery_app.amqp_queue_arguments`).

A consumer bootstep in each worker's main process consumes the parking queue.
Each message becomes a DLQ entry with reason ``redelivery_limit`` and the whole
trigger (its task kwargs, replayable unchanged), marks the ledger scope dead as
our own redelivery limit does, and only then is acknowledged. While the entry
cannot be written (Redis down) the message is held unacknowledged, one at a
time (prefetch 1), and written again every :data:`RETRY_S`: it is never
requeued, so it spends no delivery of the parking queue and cannot be dropped.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery import bootsteps
from kombu.messaging import Consumer

from config.celery_app import amqp_dead_letter_queue, app, app_settings, is_amqp
from config.keys import Scope
from tasks.context import WorkerContext, current
from tasks.metrics import count_outcome
from worker.consumer import raw_text

__all__ = ["RETRY_S", "BrokerDeadLetterDrain", "ParkedMessage", "ParkedMessages", "trigger_of"]

logger = logging.getLogger("clix.trigger")

#: How long a parked message waits before its DLQ entry is written again.
RETRY_S = 5.0


class ParkedMessage(Protocol):
    """What the drain uses of a kombu message."""

    body: Any
    headers: dict[str, Any]

    def decode(self) -> Any:
        """The payload (raises when it cannot be decoded)."""

    def ack(self) -> None:
        """Acknowledge: RabbitMQ forgets the message."""


def trigger_of(payload: Any) -> dict[str, Any] | None:
    """The task kwargs of a Celery message payload (protocol 2 or 1), if it has any."""
    if isinstance(payload, list | tuple) and len(payload) == 3 and isinstance(payload[1], dict):
        return dict(payload[1])
    if isinstance(payload, dict) and isinstance(payload.get("kwargs"), dict):
        return dict(payload["kwargs"])
    return None


def broker_reason(headers: dict[str, Any]) -> tuple[str, str]:
    """Why and from which queue RabbitMQ dead-lettered a message (its ``x-death``)."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return str(deaths[0].get("reason", "unknown")), str(deaths[0].get("queue", "?"))
    reason = headers.get("x-first-death-reason", "unknown")
    return str(reason), str(headers.get("x-first-death-queue", "?"))


class ParkedMessages:
    """Turn parked messages into DLQ entries; the ledger and DLQ come from ``ctx``."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    def drain(self, message: ParkedMessage) -> bool:
        """Write the message's DLQ entry, then acknowledge it; ``False`` if it must wait."""
        try:
            self._dead_letter(message)
        except Exception:  # Redis trouble: keep the message, try again later
            logger.warning("could not dead-letter a parked message; holding it", exc_info=True)
            return False
        message.ack()
        return True

    def _dead_letter(self, message: ParkedMessage) -> None:
        headers = dict(message.headers or {})
        try:
            trigger = trigger_of(message.decode())
        except Exception:  # noqa: BLE001 - a body we cannot read is kept raw
            trigger = None
        reason, queue = broker_reason(headers)
        error = f"RabbitMQ dead-lettered the message from {queue} ({reason})"
        if reason == "delivery_limit":
            error += (
                ": delivered more times than the queue's delivery limit (x-delivery-limit); "
                "requeues for an open breaker, 429s or Redis trouble count there too"
            )
        task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
        project_id = self.ctx.settings.clix_project_id
        scope = self._scope(project_id, trigger)
        meta = self.ctx.store.meta(scope) if scope is not None else {}
        dlq = self.ctx.dlq
        entry = dlq.new_entry(
            # nothing to replay without a trigger: as poison that never decoded
            reason="redelivery_limit" if trigger is not None else "invalid_payload",
            error=error,
            trigger=trigger,
            attempts=_int(meta.get("attempts")),
            first_seen=_float(meta.get("first_seen")),
            project_id=project_id,
            task_id=task_id,
            raw=None if trigger is not None else raw_text(message.body),
        )
        plan = self.ctx.plans.get(str(entry["campaign_id"]))
        if plan is not None and plan.pii_keys:
            entry["pii"] = sorted(plan.pii_keys)  # hidden when shown, kept for replay
        # marks the scope dead unless another delivery holds it right now
        entry_id = self.ctx.dlq.add(entry, scope=scope)
        count_outcome("dead_lettered", entry["reason"])
        event = {
            "outcome": "dead_lettered",
            "task_id": task_id,
            "campaign_id": entry["campaign_id"],
            "idempotency_key": entry["idempotency_key"],
            "reason": entry["reason"],
            "dead_letter_id": entry_id,
            "error": error,
        }
        logger.error(
            "trigger %s",
            " ".join(f"{k}={v}" for k, v in event.items() if v is not None),
            extra={"clix": event},
        )

    @staticmethod
    def _scope(project_id: str | None, trigger: dict[str, Any] | None) -> Scope | None:
        if project_id is None or trigger is None:
            return None
        campaign, key = trigger.get("campaign_id"), trigger.get("idempotency_key")
        if isinstance(campaign, str) and isinstance(key, str):
            return Scope(project_id, campaign, key)
        return None


class BrokerDeadLetterDrain(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Consume the parking queue in the worker's main process (RabbitMQ quorum queues only)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.parked: ParkedMessages | None = None
        self.held: ParkedMessage | None = None
        self.timer: Any = None
        self.retry: Any = None

    def start(self, c: Any) -> None:
        """Declare the parking queue and its exchange, and consume it."""
        settings = app_settings(app)
        if not is_amqp(settings) or settings.clix_amqp_queue_type != "quorum":
            return  # a classic queue or Redis never drops a requeued message
        self.parked = ParkedMessages(current())
        self.timer = c.timer
        super().start(c)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        """One consumer, one message at a time."""
        queue = amqp_dead_letter_queue(app_settings(app))
        consumer = Consumer(  # type: ignore[no-untyped-call]
            channel, queues=[queue], on_message=self.on_message, accept=["json"], prefetch_count=1
        )
        return [consumer]

    def on_message(self, message: ParkedMessage) -> None:
        """A parked message: into the DLQ, or held until Redis takes it."""
        assert self.parked is not None
        if not self.parked.drain(message):
            self.held = message
            self.retry = self.timer.call_after(RETRY_S, self.drain_held)

    def drain_held(self) -> None:
        """Try the held message again."""
        if self.held is None or self.parked is None:
            return
        if self.parked.drain(self.held):
            self.held = None
        else:
            self.retry = self.timer.call_after(RETRY_S, self.drain_held)

    def stop(self, c: Any) -> None:
        """Stop consuming; a held message goes back to RabbitMQ with the channel."""
        self._forget_held()
        super().stop(c)

    def shutdown(self, c: Any) -> None:
        """Worker shutdown."""
        self._forget_held()
        super().shutdown(c)

    def _forget_held(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self.held = None


def _int(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
