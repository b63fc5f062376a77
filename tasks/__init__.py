"""The ``trigger_campaign`` task and everything one run of it needs.

Producers use :func:`enqueue_trigger` (``send_at`` / ``delay_s`` schedule it)
and :func:`cancel_trigger`; the worker runs :data:`trigger_campaign`.
"""

from tasks.cancel import cancel_trigger
from tasks.errors import InvalidTrigger
from tasks.producer import enqueue_many, enqueue_trigger
from tasks.trigger import trigger_campaign

__all__ = [
    "InvalidTrigger",
    "cancel_trigger",
    "enqueue_many",
    "enqueue_trigger",
    "trigger_campaign",
]
