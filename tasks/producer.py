"""The producer API: validate a trigger in the caller, then enqueue it.

``enqueue_trigger`` is what application code calls. A bad trigger raises
:class:`~tasks.errors.InvalidTrigger` (a ``ValueError``) naming the field,
before anything is published. It needs no Clix credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from config.celery_app import app, app_settings
from tasks.context import plan_registry, producer_ledger
from tasks.errors import InvalidTrigger
from tasks.models import TriggerRequest
from tasks.plans import check_contract
from tasks.trigger import trigger_campaign

__all__ = ["enqueue_many", "enqueue_trigger"]


def enqueue_trigger(
    campaign_id: str,
    idempotency_key: str,
    *,
    audience: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """Validate and enqueue one trigger; return its Celery ``AsyncResult``.

    ``audience`` and ``properties`` are sent exactly as given (leave them out
    for none). ``options`` go to ``apply_async`` (``countdown`` is refused:
    a delayed message would sit in worker memory past the prefetch limit).
    """
    if "countdown" in options or "eta" in options:
        raise InvalidTrigger(["countdown/eta: not supported; enqueue when the trigger is due"])
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
