"""The ``trigger_campaign`` task: its producer side and its worker side.

Producer side: the task class validates before publishing (generic rules and
the campaign's plan), so ``trigger_campaign.delay(...)`` raises for a bad
trigger before anything is queued; it writes the pending record, then
publishes with a ``kwargsrepr`` that shows ids and property *names* only.

Worker side: each message becomes one :class:`tasks.delivery.Delivery`;
:class:`RedactedRequest` keeps payload values out of the worker's events
(Flower) whoever published the message, and on a Redis broker puts a requeued
message back at the head of its queue, where it was.

Any other publish of the task through this project's app (``app.send_task``)
gets its pending record from :mod:`tasks.publishing`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import Task, states
from celery.backends.redis import RedisBackend
from celery.exceptions import Ignore, Reject
from celery.worker.request import Request as CeleryRequest
from kombu.transport.redis import QoS as RedisQoS
from kombu.utils.uuid import uuid

from config.broker_transport import carried_write_left
from config.celery_app import TASK_NAME, app, app_settings, result_backend_url
from config.settings import Settings
from tasks import context
from tasks.delivery import Delivery, EarlyCopy, RequeueMessage
from tasks.errors import (
    DeadLettered,
    InvalidTrigger,
)
from tasks.idempotency import ResultRecord
from tasks.models import TriggerRequest
from tasks.pending import ENQUEUED_AT_HEADER
from tasks.plans import check_contract
from tasks.publishing import pend  # the module also records send_task publishes
from tasks.scheduler import schedule_trigger, when_from

__all__ = [
    "RedactedRequest",
    "TriggerTask",
    "check_plan",
    "result_writer",
    "success_meta",
    "summary",
    "trigger_campaign",
]

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

    def reject(self, requeue: bool = False) -> None:
        """Reject the message; on a Redis broker, requeue it at the head of its queue.

        kombu's Redis transport requeues a rejected message with LPUSH while
        workers BRPOP from the other end: a message requeued after its pool
        process died (``reject_on_worker_lost``) or by :class:`Reject` would
        wait behind the whole backlog, past the recovery promise, and the
        reconciler (which relies on the queue being FIFO) would take it for
        lost. The visibility-timeout restore already puts messages at the head;
        this does the same for a rejection. Other brokers (RabbitMQ) keep
        their own requeue.
        """
        if requeue and not getattr(self, "acknowledged", False) and self._requeue_at_head():
            # The message is back in its queue: settle this delivery of it the
            # way kombu does after a requeue (in the event loop), without a copy.
            self.on_reject(logger, self.connection_errors, False)
            self.acknowledged = True
            self.send_event("task-rejected", requeue=True)
            return
        super().reject(requeue=requeue)

    def _requeue_at_head(self) -> bool:
        """Move the message from the unacked hash to the head of its queue (Redis only)."""
        message = self.message
        qos = getattr(message.channel, "qos", None)
        if not isinstance(qos, RedisQoS):
            return False
        try:
            # one MULTI/EXEC: out of the unacked hash and RPUSHed (the BRPOP end)
            qos.restore_by_tag(message.delivery_tag, leftmost=False)  # type: ignore[no-untyped-call]
        except Exception:  # kombu's own requeue gets its turn
            logger.warning("could not requeue a message at the head of its queue", exc_info=True)
            return False
        return True


class TriggerTask(Task):  # type: ignore[misc]
    """Celery task class that validates triggers before they are published."""

    acks_late = True
    reject_on_worker_lost = True
    Request = RedactedRequest
    # Dead-lettering is an expected outcome: the task is marked failed, but the
    # worker logs our one structured line instead of a traceback.
    throws = (DeadLettered,)
    typing = False  # the worker validates kwargs itself and dead-letters bad ones
    #: whether the ledger's commit writes the Celery result, decided once for the
    #: settings it names (see :func:`result_writer`), not at every trigger
    results_in_commit: tuple[Settings, bool] | None = None

    def apply_async(
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:  # returns celery.result.AsyncResult
        """Validate (generic rules and the campaign's plan), then publish.

        Raises :class:`InvalidTrigger` naming the field; nothing is published then.
        """
        if args:
            raise InvalidTrigger(["trigger_campaign takes keyword arguments only"])
        # a countdown/eta is never a Celery ETA message: it goes on the schedule
        when = when_from(eta=options.pop("eta", None), countdown=options.pop("countdown", None))
        trigger = TriggerRequest.parse(kwargs if kwargs is not None else {})
        clean = trigger.to_kwargs()
        settings = app_settings(self.app)
        # Pending record first, then the publish: a publish that fails, a broker
        # that forgets, a message lost in a worker crash are all re-published by
        # the reconciler. The bulk path (which checked the plan) and the reconciler
        # (re-publishing a checked trigger) pass the enqueue time: the record is
        # theirs; a plan changed since is caught by the worker's own check.
        # The header tells tasks.publishing the record is written (once per publish).
        enqueued_at_ms = options.pop("clix_enqueued_at_ms", None)
        if enqueued_at_ms is None:
            check_plan(clean, settings)
            if when is not None:
                scheduled = schedule_trigger(clean, when, settings, task_id=options.get("task_id"))
                if scheduled.task_id is not None:  # scheduled now, or before under this key
                    return self.AsyncResult(scheduled.task_id)
                # the key is queued, in flight, done or cancelled: publish a copy now,
                # which the worker answers as a duplicate with the first result
            # stamped by the store's clock; written now (a failure raises before
            # publishing) or by the publish's own script, ahead of the message
            ledger = context.producer_ledger(settings)
            if "producer" in options or "connection" in options:
                # the caller's own producer may not be on our broker channel
                enqueued_at_ms = ledger.record([clean])
            else:
                options["task_id"] = task_id = options.get("task_id") or uuid()
                enqueued_at_ms = pend(self.app, settings, ledger, clean, task_id)
        return self.publish_recorded(clean, enqueued_at_ms, **options)

    def publish_recorded(self, clean: dict[str, Any], enqueued_at_ms: int, **options: Any) -> Any:
        """Publish valid kwargs whose pending record is written (stamped ``enqueued_at_ms``).

        No validation, no record: the caller did both (the bulk path, for a
        whole batch at once). The header tells :mod:`tasks.publishing` the
        record exists; the ``kwargsrepr`` shows ids and property names only.
        """
        options["headers"] = {**(options.get("headers") or {}), ENQUEUED_AT_HEADER: enqueued_at_ms}
        options.setdefault("argsrepr", "()")
        options.setdefault("kwargsrepr", summary(clean))
        try:
            return super().apply_async((), clean, **options)
        except BaseException:
            # the publish failed (it raises): a write carried for it must not linger
            if options.get("task_id"):
                carried_write_left(str(options["task_id"]))
            raise


def check_plan(clean: dict[str, Any], settings: Settings) -> None:
    """Check valid kwargs against their campaign's plan (``CLIX_PLANS``), or raise.

    Raises :class:`InvalidTrigger` naming the field.
    """
    check_contract(
        clean,
        context.plan_registry(settings.clix_plans),
        strict=settings.clix_plans_strict,
        pii_warning=settings.clix_pii_warning,
    )


@app.task(bind=True, base=TriggerTask, name=TASK_NAME)  # type: ignore[untyped-decorator]
def trigger_campaign(self: TriggerTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Deliver one trigger to Clix; return ``{"trigger_id", "deduplicated"}``."""
    ctx = context.current()
    delivery = Delivery(
        ctx, self.request.id, args, kwargs, result_record=result_writer(self, ctx.settings)
    )
    try:
        result = delivery.run()
    except RequeueMessage as requeue:
        raise Reject(str(requeue), requeue=True) from None
    except EarlyCopy:
        raise Ignore() from None  # acknowledged, no result: the due copy stores it
    if delivery.result_written:
        # the commit wrote the result in its own step: Celery need not (a GET and
        # a SETEX + PUBLISH fewer per trigger)
        self.request.ignore_result = True
    return result


def result_writer(
    task: TriggerTask, settings: Settings
) -> Callable[[dict[str, Any]], ResultRecord | None] | None:
    """How the ledger's commit writes this task's result, or None to leave it to Celery.

    Only when the result backend is the store's Redis (the default): the
    record is exactly what Celery's Redis backend would write (same key, same
    encoded meta, same expiry) and the commit publishes it as Celery does, so
    ``AsyncResult.get()`` works unchanged.
    """
    decided = task.results_in_commit
    if decided is None or decided[0] is not settings:
        decided = task.results_in_commit = (settings, _commit_can_write_results(task, settings))
    if not decided[1]:
        return None
    backend = task.backend
    request = task.request
    task_id = request.id

    def record(result: dict[str, Any]) -> ResultRecord:
        meta = success_meta(backend, request, result)
        ttl_s = backend.expires
        return ResultRecord(
            backend.get_key_for_task(task_id), backend.encode(meta), int(ttl_s or 0)
        )

    return record


def success_meta(backend: Any, request: Any, result: Any) -> dict[str, Any]:
    """The meta Celery's Redis backend stores for a successful task, unextended.

    What ``backend._get_result_meta(...)`` builds plus the ``task_id`` its
    ``store_result`` adds, key for key and in the same order; built here
    without its per-call settings lookup (``result_extended`` is ruled out
    once, by :func:`_commit_can_write_results`): ~10 µs a trigger.
    tests/unit/test_result_meta.py holds it equal to Celery's own.
    """
    meta: dict[str, Any] = {
        "status": states.SUCCESS,
        "result": result,
        "traceback": None,
        "children": backend.current_task_children(request),
        "date_done": datetime.now(backend.app.timezone).isoformat(),
    }
    if getattr(request, "group", None):
        meta["group_id"] = request.group
    if getattr(request, "parent_id", None):
        meta["parent_id"] = request.parent_id
    meta["task_id"] = request.id
    return meta


def _commit_can_write_results(task: TriggerTask, settings: Settings) -> bool:
    """Whether the app stores results in the store's Redis, unextended (what the commit writes)."""
    if not isinstance(task.backend, RedisBackend):
        return False
    if task.app.conf.result_backend != result_backend_url(settings):
        return False
    return not task.app.conf.result_extended  # the extended meta carries the request: Celery's
