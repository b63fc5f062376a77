"""The producer API: validate a trigger in the caller, then enqueue it.

``enqueue_trigger`` is what application code calls. A bad trigger raises
:class:`~tasks.errors.InvalidTrigger` (a ``ValueError``) naming the field,
before anything is published. It needs no Clix credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from config.celery_app import app, app_settings
from tasks.context import plan_registry, producer_ledger
from tasks.errors import InvalidTrigger
from tasks.models import TriggerRequest
from tasks.plans import check_contract
from tasks.scheduler import when_from
from tasks.trigger import trigger_campaign

__all__ = ["enqueue_many", "enqueue_trigger"]


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


#: Triggers per pending-ledger round trip on the bulk path.
BATCH = 500


def enqueue_many(triggers: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Validate and enqueue many triggers over one broker connection; yield task ids.

    Each item is a dict of task kwargs. Items are validated and their pending
    records written a batch at a time (one round trip per batch), then
    published; a bad item raises before its batch is published.
    """
    settings = app_settings(app)
    ledger = producer_ledger(settings)
    registry = plan_registry(settings.clix_plans)
    with app.producer_or_acquire() as producer:
        for batch in _batches(triggers, BATCH):
            clean = [TriggerRequest.parse(kwargs).to_kwargs() for kwargs in batch]
            for kwargs in clean:
                check_contract(
                    kwargs,
                    registry,
                    strict=settings.clix_plans_strict,
                    pii_warning=settings.clix_pii_warning,
                )
            enqueued_at_ms = ledger.record(clean)  # one round trip, the store's clock
            for kwargs in clean:
                result = trigger_campaign.apply_async(
                    kwargs=kwargs, producer=producer, clix_enqueued_at_ms=enqueued_at_ms
                )
                yield result.id


def _batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
