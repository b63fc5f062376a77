"""The ``trigger_campaign`` task: its producer side and its worker side.

Producer side: the task class validates before publishing (generic rules and
the campaign's plan), so ``trigger_campaign.delay(...)`` raises for a bad
trigger before anything is queued; it writes the pending record, then
publishes with a ``kwargsrepr`` that shows ids and property *names* only.

Worker side: each message becomes one :class:`tasks.delivery.Delivery`;
:class:`RedactedRequest` keeps payload values out of the worker's events
(Flower) whoever published the message.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.worker.request import Request as CeleryRequest

from config.celery_app import TASK_NAME, app, app_settings
from tasks import context
from tasks.delivery import Delivery, RequeueMessage
from tasks.errors import (
    DeadLettered,
    InvalidTrigger,
)
from tasks.models import TriggerRequest
from tasks.pending import ENQUEUED_AT_HEADER
from tasks.plans import check_contract

__all__ = ["RedactedRequest", "TriggerTask", "summary", "trigger_campaign"]

logger = logging.getLogger("clix.trigger")


def summary(kwargs: dict[str, Any]) -> str:
    """What Flower and logs show for a trigger: ids and property names, no values."""
    props = kwargs.get("properties")
    names = sorted(props) if isinstance(props, dict) else []
    return (
        f"{{'campaign_id': {kwargs.get('campaign_id')!r}, "
        f"'idempotency_key': {kwargs.get('idempotency_key')!r}, "
        f"'properties': {names!r}}}"
    )


class RedactedRequest(CeleryRequest):  # type: ignore[misc]
    """The worker's view of a message: events (Flower) carry a summary, never values.

    Our producers already publish a redacted ``kwargsrepr``; a producer in
    another language (``send_task``) publishes Celery's full repr of the
    kwargs. The worker's ``task-received`` event replaces it, so Flower ends up
    showing ids and property names only, whoever enqueued.
    """

    @property
    def kwargsrepr(self) -> str:
        kwargs = self.kwargs
        return summary(kwargs if isinstance(kwargs, dict) else {})

    @property
    def argsrepr(self) -> str:
        return "()" if not self.args else f"<{len(self.args)} positional arguments>"


class TriggerTask(Task):  # type: ignore[misc]
    """Celery task class that validates triggers before they are published."""

    acks_late = True
    reject_on_worker_lost = True
    Request = RedactedRequest
    # Dead-lettering is an expected outcome: the task is marked failed, but the
    # worker logs our one structured line instead of a traceback.
    throws = (DeadLettered,)
    typing = False  # the worker validates kwargs itself and dead-letters bad ones

    def apply_async(
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:  # returns celery.result.AsyncResult
        """Validate (generic rules and the campaign's plan), then publish.

        Raises :class:`InvalidTrigger` naming the field; nothing is published then.
        """
        if args:
            raise InvalidTrigger(["trigger_campaign takes keyword arguments only"])
        trigger = TriggerRequest.parse(kwargs if kwargs is not None else {})
        clean = trigger.to_kwargs()
        settings = app_settings(self.app)
        # Pending record first, then the publish: a publish that fails, a broker
        # that forgets, a message lost in a worker crash are all re-published by
        # the reconciler. The bulk path (which checked the plan) and the reconciler
        # (re-publishing a checked trigger) pass the enqueue time: the record is
        # theirs; a plan changed since is caught by the worker's own check.
        enqueued_at_ms = options.pop("clix_enqueued_at_ms", None)
        if enqueued_at_ms is None:
            check_contract(
                clean,
                context.plan_registry(settings.clix_plans),
                strict=settings.clix_plans_strict,
                pii_warning=settings.clix_pii_warning,
            )
            ledger = context.producer_ledger(settings)
            enqueued_at_ms = ledger.now_ms()
            ledger.record([clean], enqueued_at_ms)
        options["headers"] = {**(options.get("headers") or {}), ENQUEUED_AT_HEADER: enqueued_at_ms}
        options.setdefault("argsrepr", "()")
        options.setdefault("kwargsrepr", summary(clean))
        return super().apply_async((), clean, **options)


@app.task(bind=True, base=TriggerTask, name=TASK_NAME)  # type: ignore[untyped-decorator]
def trigger_campaign(self: TriggerTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Deliver one trigger to Clix; return ``{"trigger_id", "deduplicated"}``."""
    delivery = Delivery(context.current(), self.request.id, args, kwargs)
    try:
        return delivery.run()
    except RequeueMessage as requeue:
        raise Reject(str(requeue), requeue=True) from None
