"""Every publish of ``trigger_campaign`` through this project's app gets a pending record.

``enqueue_trigger``, ``trigger_campaign.delay``, the bulk path and the
reconciler write the record themselves (validating first) and mark the message
with :data:`~tasks.pending.ENQUEUED_AT_HEADER`. A Python producer may also
publish by name, ``app.send_task("trigger_campaign", kwargs=...)``, which
never goes through the task class. Celery sends ``before_task_publish`` for
every publish whatever the call, in the publishing process, with the message's
headers still open for change: :data:`record_pending` writes the record there
(one round trip, stamped by the store's clock) and puts the stamp in the header,
unless the header says it is written already. So each publish writes exactly
one record, and a worker killed between kombu's ``BRPOP`` and its unacked
bookkeeping can no longer lose a ``send_task`` trigger for good.

Only publishes through this project's app count (another Celery app in the same
process, say a test's stand-in for a producer in another language, is left
alone): the queue Celery declares for the message is this app's own queue
object. Producers in other languages write the record themselves; see
``examples/foreign-producer``.

A publish with a Celery ETA (``send_task(..., countdown=... / eta=...)``) is
put on the schedule instead (:mod:`tasks.schedule`): the message goes out at
once without its ETA and is dropped by the worker as an early copy; the
schedule's mover publishes the trigger, under the same task id, when it is due.

Celery logs and swallows an exception raised by a signal handler, so a store
that cannot be written cannot stop the publish here: the message goes out
without a record (delivered as usual unless its worker dies in that gap) and an
error line names the trigger. ``enqueue_trigger`` raises instead.

When the broker is the store's Redis, neither writes the record on its own:
:func:`pend` hands it to the publish, which writes record and message in one
script, record first (:meth:`~tasks.pending.PendingLedger.carry`): no message
is queued without its record, and a failed publish raises.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.signals import after_task_publish, before_task_publish

from config.broker_transport import carried_write_left, carries_pushes
from config.celery_app import TASK_NAME, app, app_settings
from config.keys import KeySpace
from config.settings import Settings
from tasks import context
from tasks.pending import ENQUEUED_AT_HEADER, PendingLedger
from tasks.schedule import ScheduleStore

__all__ = ["PendingRecorder", "pend", "record_pending", "record_rides_publish", "trigger_kwargs"]

logger = logging.getLogger("clix.producer")


def trigger_kwargs(body: Any) -> dict[str, Any] | None:
    """The kwargs of a task message body that can be keyed (campaign and key strings)."""
    if isinstance(body, list | tuple) and len(body) >= 2:  # protocol 2: (args, kwargs, embed)
        kwargs = body[1]
    elif isinstance(body, dict):  # protocol 1
        kwargs = body.get("kwargs")
    else:
        return None
    if not isinstance(kwargs, dict):
        return None
    if not isinstance(kwargs.get("campaign_id"), str):
        return None
    if not isinstance(kwargs.get("idempotency_key"), str):
        return None
    return kwargs


#: Headers Celery writes into every message whose value is what its worker
#: assumes when the header is absent (``celery.worker.request.Request`` reads
#: each with ``.get``, ``celery.app.task.Context`` has the same defaults).
#: Dropped from our messages: about 250 of a queued trigger's bytes.
_DEFAULT_HEADERS: dict[str, Any] = {
    "lang": "py",
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "parent_id": None,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}


def _drop_default_headers(headers: dict[str, Any], task: Any) -> None:
    for name, default in _DEFAULT_HEADERS.items():
        if name in headers and headers[name] == default:
            del headers[name]
    if tuple(headers.get("timelimit") or ()) == (None, None):
        del headers["timelimit"]  # no limits: the worker's own defaults apply
    if headers.get("ignore_result") is False and task is not None and not task.ignore_result:
        # absent, the worker takes the task's own setting: the same here
        del headers["ignore_result"]
    if headers.get("root_id") is not None and headers.get("root_id") == headers.get("id"):
        # a trigger is its own root (nothing chains it): the id says it already
        del headers["root_id"]


def record_rides_publish(celery_app: Celery, settings: Settings) -> bool:
    """Whether a publish through ``celery_app`` can write its own pending record.

    Yes when the broker the app publishes to is the store's Redis (the same
    URL; Celery publishes to ``broker_write_url``, which is ``broker_url``
    unless set apart) and the app publishes through
    :mod:`config.broker_transport`'s channel. Decided once per app and
    settings object (``conf.update(celery_config(...))`` brings a new one):
    reading Celery's configuration costs tens of µs a publish.
    """
    decided = _RIDES.get(celery_app)
    if decided is None or decided[0] is not settings:
        conf = celery_app.conf
        store = settings.redis_url
        rides = conf.broker_write_url == store == conf.broker_url and carries_pushes(celery_app)
        decided = _RIDES[celery_app] = (settings, rides)
    return decided[1]


# record_rides_publish's decisions, by app
_RIDES: weakref.WeakKeyDictionary[Celery, tuple[Settings, bool]] = weakref.WeakKeyDictionary()


def pend(
    celery_app: Celery,
    settings: Settings,
    ledger: PendingLedger,
    kwargs: dict[str, Any],
    message_id: str,
) -> int:
    """Make sure message ``message_id`` has a pending record; return its stamp.

    Handed to the publish when it can write it (one round trip for both, see
    :func:`record_rides_publish`), else written now: a round trip before the
    publish. Either way the record exists before the message can be taken
    (through a kombu producer made by hand, it follows the message at once:
    :meth:`PendingRecorder.after_publish`).
    """
    if message_id and record_rides_publish(celery_app, settings):
        return ledger.carry(kwargs, message_id)
    return ledger.record([kwargs])


class PendingRecorder:
    """The ``before_task_publish`` receiver of one Celery app; see the module docstring.

    ``ledger_for`` gives the pending ledger of the app's settings (one Redis pool
    per process and store in production; fakeredis in tests).
    """

    def __init__(
        self,
        celery_app: Celery,
        ledger_for: Callable[[Settings], PendingLedger] = context.producer_ledger,
        schedule_for: Callable[[Settings], ScheduleStore] | None = None,
    ) -> None:
        self.app = celery_app
        self.ledger_for = ledger_for
        self.schedule_for = schedule_for or (
            lambda settings: ScheduleStore(
                ledger_for(settings).redis,
                KeySpace.of(settings),
                ttl_s=settings.clix_idempotency_ttl_s,
            )
        )

    def through_this_app(self, declare: Sequence[Any] | None) -> bool:
        """Whether Celery routed the message to this app's trigger queue (the same object)."""
        ours = self.app.amqp.queues.get(app_settings(self.app).clix_queue)
        return ours is not None and any(queue is ours for queue in declare or ())

    def __call__(
        self,
        sender: str | None = None,
        body: Any = None,
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        declare: Sequence[Any] | None = None,
        **_: Any,
    ) -> None:
        """Write the pending record of a message published without one; stamp its header."""
        if sender != TASK_NAME or not self.through_this_app(declare):
            return
        if properties is not None:
            # Celery copies apply_async's argsrepr/kwargsrepr into the message's
            # properties as well as its headers; workers and Flower read the
            # headers, so the copies only cost ~130 bytes of every queued message.
            properties.pop("argsrepr", None)
            properties.pop("kwargsrepr", None)
            if not str(self.app.conf.result_backend or "").startswith("rpc"):
                # the publisher's reply queue: only the rpc:// result backend answers there
                properties.pop("reply_to", None)
        if headers is not None:
            _drop_default_headers(headers, self.app.tasks.get(TASK_NAME))
        if headers is None or ENQUEUED_AT_HEADER in headers:
            return  # written by enqueue_trigger, the bulk path or the reconciler
        kwargs = trigger_kwargs(body)
        if kwargs is None:
            return  # cannot be keyed: the worker dead-letters it as invalid_payload
        if headers.get("eta"):
            self._schedule_instead(kwargs, headers)
            return
        try:
            settings = app_settings(self.app)
            ledger = self.ledger_for(settings)
            message_id = str((properties or {}).get("correlation_id") or "")
            headers[ENQUEUED_AT_HEADER] = pend(self.app, settings, ledger, kwargs, message_id)
        except Exception as exc:  # noqa: BLE001 - Celery would swallow it; say which trigger
            logger.error(
                "published without a pending record (the store could not be written): "
                "campaign_id=%s idempotency_key=%s error=%s",
                kwargs["campaign_id"],
                kwargs["idempotency_key"],
                type(exc).__name__,
            )

    def after_publish(
        self, sender: str | None = None, body: Any = None, headers: Any = None, **_: Any
    ) -> None:
        """The ``after_task_publish`` receiver: write a record the publish left behind.

        A producer built by hand on a plain kombu connection publishes with
        kombu's own LPUSH, which ignores the record :func:`pend` handed over.
        The record then follows its message by a round trip instead of being
        lost.
        """
        if sender != TASK_NAME or not isinstance(headers, dict):
            return
        if carried_write_left(str(headers.get("id"))) is None:
            return  # the usual case: the publish wrote it
        kwargs = trigger_kwargs(body)
        stamp = headers.get(ENQUEUED_AT_HEADER)
        if kwargs is not None and isinstance(stamp, int):
            ledger = self.ledger_for(app_settings(self.app))
            ledger.record([kwargs], enqueued_at_ms=stamp)
            logger.info(
                "a trigger was published through a connection without this project's broker "
                "transport; its pending record was written after it: "
                "campaign_id=%s idempotency_key=%s",
                kwargs["campaign_id"],
                kwargs["idempotency_key"],
            )

    def _schedule_instead(self, kwargs: dict[str, Any], headers: dict[str, Any]) -> None:
        """``send_task(..., countdown=/eta=)``: put the trigger on the schedule, never an ETA.

        The message still goes out (a signal handler cannot stop it), now and
        without its ETA; it carries the scheduled record's task id and is due
        later, so the worker's claim drops it as an early copy. The mover
        publishes the trigger again, with the same id, when it is due.
        """
        eta = dt.datetime.fromisoformat(str(headers["eta"]))
        if eta.tzinfo is None:  # Celery without a timezone writes UTC
            eta = eta.replace(tzinfo=dt.UTC)
        try:
            settings = app_settings(self.app)
            scheduled = self.schedule_for(settings).schedule(
                kwargs,
                send_at_ms=math.ceil(eta.timestamp() * 1000),
                project_id=settings.clix_project_id,
                task_id=str(headers.get("id") or ""),
            )
        except Exception as exc:  # noqa: BLE001 - Celery would swallow it; say which trigger
            logger.error(
                "could not schedule a send_task with countdown/eta; it is sent now: "
                "campaign_id=%s idempotency_key=%s error=%s",
                kwargs["campaign_id"],
                kwargs["idempotency_key"],
                type(exc).__name__,
            )
            return
        if scheduled.task_id is not None:
            headers["eta"] = None
            headers[ENQUEUED_AT_HEADER] = 0  # no pending record: the schedule holds it


#: The receiver of this project's app, connected once per process.
record_pending = PendingRecorder(app)
before_task_publish.connect(
    record_pending, sender=TASK_NAME, weak=False, dispatch_uid="clix-pending-record"
)
after_task_publish.connect(
    record_pending.after_publish,
    sender=TASK_NAME,
    weak=False,
    dispatch_uid="clix-pending-record-after",
)
