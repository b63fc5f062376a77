"""The producer API: validate a trigger in the caller, then enqueue it.

``enqueue_trigger`` is what application code calls. A bad trigger raises
:class:`~tasks.errors.InvalidTrigger` (a ``ValueError``) naming the field,
before anything is published. It needs no Clix credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from config.celery_app import app
from tasks.errors import InvalidTrigger
from tasks.models import TriggerRequest
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


def enqueue_many(triggers: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Validate and enqueue many triggers over one broker connection; yield task ids.

    Each item is a dict of task kwargs. Validation runs per item, so a bad
    item raises before it is published, after the items before it were.
    """
    with app.producer_or_acquire() as producer:
        for kwargs in triggers:
            TriggerRequest.parse(kwargs)
            yield trigger_campaign.apply_async(kwargs=kwargs, producer=producer).id
