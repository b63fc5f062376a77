"""The Celery application object and its configuration.

Routing lives here (``task_default_queue`` and ``task_routes``), so
``app.send_task("trigger_campaign", kwargs=...)`` from any producer reaches the
same queue as ``trigger_campaign.delay(...)``.

Delivery settings and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged
  only after its outcome is durable; a worker child killed mid-task puts the
  message back instead of acknowledging it.
* ``worker_prefetch_multiplier=1``: a worker holds no more messages than it
  works on, so a crash strands as few as possible and no copy waits in memory.
* ``worker_pool="threads"``, ``worker_concurrency=DEFAULT_WORKER_CONCURRENCY``:
  a delivery spends most of its time waiting for Clix (tens of ms over the
  internet), so one process runs many deliveries at once; threads keep a
  2-core machine busy at 50-200 ms of latency where prefork -c2 waits (see
  docs/BENCHMARKS.md). ``-P``/``-c`` on the command line override both (the
  prefork pool still works: clients are rebuilt after fork). Celery cannot
  tell ``-P prefork`` from its own default and lets a configured
  ``worker_pool`` win over it, so the pool (and its concurrency) is configured
  only when the command line names none. gevent is not a default: Celery only monkey-patches when
  ``-P gevent`` is on the command line.
* The Redis broker's connection cap (``max_connections``) is far above the
  concurrency: every thread acknowledges its own message (``acks_late``) over
  a connection of its own, and kombu's default of 10 stalls tens of threads
  (``MaxConnectionsError``). Connections are opened on demand, not reserved.
* ``visibility_timeout`` and ``unacked_restore_*``: a message whose worker died
  entirely is handed out again after the visibility timeout; the restore sweep
  runs every ``CLIX_UNACKED_RESTORE_INTERVAL_S`` (kombu's default is about
  100 s), which is what keeps recovery under 120 s.
* ``result_extended`` stays off and ``task_send_sent_event`` carries only our
  redacted ``kwargsrepr``: payloads never reach the result backend or Flower.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from celery import Celery

from config.settings import DEFAULT_CONCURRENCY, Settings, get_settings

__all__ = [
    "BROKER_MAX_CONNECTIONS",
    "DEFAULT_WORKER_CONCURRENCY",
    "DEFAULT_WORKER_POOL",
    "TASK_NAME",
    "app",
    "app_settings",
    "celery_config",
    "pool_on_command_line",
]

#: Registered name of the task: part of the public contract.
TASK_NAME = "trigger_campaign"

#: The plain ``celery -A worker worker``: a pool of threads, this many per process.
DEFAULT_WORKER_POOL = "threads"
DEFAULT_WORKER_CONCURRENCY = DEFAULT_CONCURRENCY
#: Cap on the Redis broker's connections per worker process (opened on demand).
BROKER_MAX_CONNECTIONS = 1024


def pool_on_command_line(argv: Sequence[str]) -> bool:
    """Whether a ``celery worker`` command line chooses its pool (``-P``/``--pool``)."""
    return any(arg in ("-P", "--pool") or arg.startswith(("-P", "--pool=")) for arg in argv)


def celery_config(settings: Settings, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the Celery configuration for ``settings``.

    ``argv``: the process's command line (default ``sys.argv``); the default
    pool is configured only when it does not choose one.
    """
    transport_options: dict[str, Any] = {
        "visibility_timeout": int(settings.clix_visibility_timeout_s),
        "unacked_restore_interval": settings.clix_unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    broker_options = {**transport_options, "max_connections": BROKER_MAX_CONNECTIONS}
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": broker_options,
        "result_backend_transport_options": dict(transport_options),
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.clix_queue,
        "task_routes": {TASK_NAME: {"queue": settings.clix_queue}},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": settings.clix_result_ttl_s,
        "result_extended": False,
        "task_track_started": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "enable_utc": True,
        # Producers read our settings from the app they publish with, so an
        # application that configures its own app (or a test) is consistent.
        "clix_settings": settings,
    }
    if not pool_on_command_line(sys.argv if argv is None else argv):
        # the pool and its size go together: `-P prefork` alone must not fork 64
        config["worker_pool"] = DEFAULT_WORKER_POOL
        config["worker_concurrency"] = DEFAULT_WORKER_CONCURRENCY
    if settings.broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
        config.update(_amqp_config(settings))
    return config


def _amqp_config(settings: Settings) -> dict[str, Any]:
    """RabbitMQ: a durable (quorum by default) trigger queue, publisher confirms.

    Quorum queues replicate and survive a node restart; they do not support the
    global QoS Celery uses by default, which ``worker_detect_quorum_queues``
    (on by default) turns off for us.
    """
    from kombu.entity import Exchange, Queue

    name = settings.clix_queue
    arguments = {"x-queue-type": settings.clix_amqp_queue_type}
    exchange = Exchange(name, type="direct", durable=True)  # type: ignore[no-untyped-call]
    queue = Queue(  # type: ignore[no-untyped-call]
        name, exchange, routing_key=name, durable=True, queue_arguments=arguments
    )
    return {
        "task_queues": (queue,),
        # a publish returns only once RabbitMQ has the message
        "broker_transport_options": {"confirm_publish": True},
    }


def app_settings(celery_app: Celery) -> Settings:
    """The settings an app was configured with (``celery_config``), else the environment's."""
    settings = celery_app.conf.get("clix_settings")
    return settings if isinstance(settings, Settings) else get_settings()


def _make_app() -> Celery:
    app = Celery("clix_trigger_worker")
    app.conf.update(celery_config(get_settings()))
    return app


app: Celery = _make_app()
