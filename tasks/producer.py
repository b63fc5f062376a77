"""The producer API: validate a trigger in the caller, then enqueue it.

``enqueue_trigger`` is what application code calls. A bad trigger raises
:class:`~tasks.errors.InvalidTrigger` (a ``ValueError``) naming the field,
before anything is published. It needs no Clix credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

from config.celery_app import app, app_settings
from tasks.context import producer_ledger
from tasks.errors import InvalidTrigger
from tasks.models import TriggerRequest
from tasks.pending import PendingLedger
from tasks.scheduler import when_from
from tasks.trigger import TriggerTask, check_plan, trigger_campaign

__all__ = ["enqueue_batches", "enqueue_many", "enqueue_trigger"]


def enqueue_trigger(
    campaign_id: str,
    idempotency_key: str,
    *,
    audience: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    send_at: datetime | None = None,
    delay_s: float | None = None,
    **options: Any,
) -> Any:
    """Validate and enqueue one trigger; return its Celery ``AsyncResult``.

    ``audience`` and ``properties`` are sent exactly as given (leave them out
    for none). ``send_at`` (a timezone-aware datetime) or ``delay_s`` (seconds
    from now) schedule the trigger instead: it waits in Redis, not in a worker,
    and is sent within about a second after its time. Its idempotency key is
    taken now: scheduling or enqueueing the same key again is a duplicate. The
    result is the ``AsyncResult`` of the message that will be sent.
    ``options`` go to ``apply_async`` (``countdown``/``eta`` mean the same as
    ``delay_s``/``send_at``).
    """
    when = when_from(send_at=send_at, delay_s=delay_s)
    if when is not None:
        if "countdown" in options or "eta" in options:
            raise InvalidTrigger(["give one of send_at / delay_s / eta / countdown, not several"])
        if when.send_at_ms is not None:
            options["eta"] = send_at
        else:
            options["countdown"] = delay_s
    kwargs: dict[str, Any] = {"campaign_id": campaign_id, "idempotency_key": idempotency_key}
    if audience is not None:
        kwargs["audience"] = audience
    if properties is not None:
        kwargs["properties"] = properties
    return trigger_campaign.apply_async(kwargs=kwargs, **options)


#: Triggers per batch on the bulk path: one pending-ledger round trip and one
#: broker pipeline each.
BATCH = 500


def enqueue_many(triggers: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Validate and enqueue many triggers over one broker connection; yield task ids.

    Each item is a dict of task kwargs. A batch at a time: every item is
    validated (a bad one raises before anything of its batch is written), the
    batch's pending records are written in one round trip, then its messages
    are published in one broker pipeline (Redis; RabbitMQ publishes each) and
    their ids yielded. Records always exist before their messages: if the
    publish fails part way, the exception propagates and the reconciler
    re-publishes whatever of the batch did not reach the queue.
    """
    return enqueue_batches(trigger_campaign, triggers, producer_ledger(app_settings(app)))


def enqueue_batches(
    task: TriggerTask,
    triggers: Iterable[dict[str, Any]],
    ledger: PendingLedger,
    *,
    size: int = BATCH,
) -> Iterator[str]:
    """:func:`enqueue_many` through ``task`` (its app, its settings) and ``ledger``."""
    settings = app_settings(task.app)
    with task.app.producer_or_acquire() as producer:
        for batch in _batches(triggers, size):
            clean = [TriggerRequest.parse(kwargs).to_kwargs() for kwargs in batch]
            for kwargs in clean:
                check_plan(kwargs, settings)
            enqueued_at_ms = ledger.record(clean)  # one round trip, the store's clock
            ids = []
            with _publish_batch(producer, len(clean)):
                for kwargs in clean:
                    ids.append(task.publish_recorded(kwargs, enqueued_at_ms, producer=producer).id)
            yield from ids


def _publish_batch(producer: Any, triggers: int) -> AbstractContextManager[Any]:
    """Buffer a batch's publishes and send them at the end of the block (kombu >= 5.7).

    One pipeline on a Redis broker; a transport without batches (RabbitMQ), or
    an older kombu, publishes each message at once. Per trigger, the message
    and, when on, its task-sent event: the block never flushes early.
    """
    batch = getattr(producer, "batch", None)
    return nullcontext() if batch is None else batch(max_size=2 * triggers)


def _batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
