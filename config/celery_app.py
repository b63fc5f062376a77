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
* Redis Sentinel (:mod:`config.sentinel`): the broker and the result backend
  take kombu's ``sentinel://...;sentinel://...`` form with the master name in
  their transport options (``master_name``), the sentinels' password in
  ``sentinel_kwargs`` (the URL's password is the primary's: kombu and Celery
  pass it to the primary only) and timeouts there too (without them a
  sentinel that stopped answering blocks the search for the primary).
  ``socket_timeout`` lets a publish on a connection to a vanished primary fail
  and reconnect instead of waiting forever.
* ``result_extended`` stays off: payloads never reach the result backend.
* ``task_send_sent_event`` only with ``CLIX_TASK_SENT_EVENTS``: the event is a
  second broker publish per enqueue, and the worker's ``task-received`` shows
  the trigger in Flower anyway (from when a worker takes it). When on, it
  carries only our redacted ``kwargsrepr``, like every event.
* The result backend subscribes to a result channel only when somebody waits
  for the result (:mod:`config.result_backend`), not at every publish.
* ``rediss://`` broker or store: ``broker_use_ssl`` / ``redis_backend_use_ssl``
  carry the ``CLIX_REDIS_TLS_*`` settings, certificate verified by default
  (see :mod:`config.redis_tls`; kombu would otherwise verify nothing).
* RabbitMQ quorum queue: an explicit ``x-delivery-limit`` and a dead-letter
  route, so a message RabbitMQ stops redelivering is parked, never dropped
  (see :func:`amqp_queue_arguments`; the worker drains the parking queue into
  our DLQ, :mod:`worker.broker_dead_letters`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from celery import Celery

from config.broker_transport import transport_for
from config.redis_tls import tls_options
from config.result_backend import ClixCelery
from config.sentinel import SentinelTarget, sentinel_kwargs
from config.settings import DEFAULT_CONCURRENCY, ConfigurationError, Settings, get_settings

__all__ = [
    "AMQP_DELIVERY_LIMIT",
    "BROKER_MAX_CONNECTIONS",
    "DEFAULT_WORKER_CONCURRENCY",
    "DEFAULT_WORKER_POOL",
    "TASK_NAME",
    "amqp_dead_letter_names",
    "amqp_dead_letter_queue",
    "amqp_queue_arguments",
    "app",
    "app_settings",
    "celery_config",
    "check_delivery_limit",
    "is_amqp",
    "pool_on_command_line",
    "result_backend_url",
]

#: Registered name of the task: part of the public contract.
TASK_NAME = "trigger_campaign"

#: RabbitMQ quorum queues: deliveries of one message before RabbitMQ dead-letters
#: it (``x-delivery-limit``; it is delivered once more than this). RabbitMQ counts
#: every ``basic.reject`` with requeue and every return after a lost channel,
#: including the requeues our own ledger does not count (open breaker, 429
#: budget spent, Redis down: about one per second and message), so it must stay
#: far above ``CLIX_REDELIVERY_LIMIT``; 4.x would otherwise apply 20, 3.x none.
#: What passes it is parked, not lost. 0 declares no limit arguments at all (an
#: operator sets them with a policy instead). The setting is
#: ``CLIX_AMQP_DELIVERY_LIMIT``; this is its default.
AMQP_DELIVERY_LIMIT = 1000

#: The parking queue's own limit: a parked message goes back only when the
#: channel of the worker draining it dies, so it is never reached in practice.
_PARKING_DELIVERY_LIMIT = 1000

#: The plain ``celery -A worker worker``: a pool of threads, this many per process.
DEFAULT_WORKER_POOL = "threads"
DEFAULT_WORKER_CONCURRENCY = DEFAULT_CONCURRENCY
#: Cap on the Redis broker's connections per worker process (opened on demand).
BROKER_MAX_CONNECTIONS = 1024
#: Behind Sentinel: a broker command with no answer for this long fails, so a
#: connection to a primary that vanished (no RST) is dropped and reopened.
SENTINEL_BROKER_SOCKET_TIMEOUT_S = 30.0


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
    broker_url, backend_options = settings.broker_url, dict(transport_options)
    if settings.broker_sentinel is not None:
        broker_url = settings.broker_sentinel.kombu_url()
        broker_options.update(_sentinel_options(settings, settings.broker_sentinel))
        broker_options["socket_timeout"] = SENTINEL_BROKER_SOCKET_TIMEOUT_S
    if settings.store_sentinel is not None:
        backend_options.update(_sentinel_options(settings, settings.store_sentinel))
    config: dict[str, Any] = {
        "broker_url": broker_url,
        "broker_transport": transport_for(broker_url),
        "result_backend": result_backend_url(settings),
        "broker_transport_options": broker_options,
        "result_backend_transport_options": backend_options,
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
        "task_send_sent_event": settings.clix_task_sent_events,
        "worker_hijack_root_logger": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "enable_utc": True,
        # Producers read our settings from the app they publish with, so an
        # application that configures its own app (or a test) is consistent.
        "clix_settings": settings,
    }
    # rediss://: the same TLS options as the store's clients (config.redis_tls);
    # kombu alone would connect without checking the certificate
    broker_tls = tls_options(settings, settings.broker_url)
    if broker_tls:
        config["broker_use_ssl"] = broker_tls
    backend_tls = tls_options(settings, settings.redis_url)
    if backend_tls:
        config["redis_backend_use_ssl"] = backend_tls
    if not pool_on_command_line(sys.argv if argv is None else argv):
        # the pool and its size go together: `-P prefork` alone must not fork 128
        config["worker_pool"] = DEFAULT_WORKER_POOL
        config["worker_concurrency"] = DEFAULT_WORKER_CONCURRENCY
    if is_amqp(settings):
        config.update(_amqp_config(settings))
    return config


def result_backend_url(settings: Settings) -> str | None:
    """Celery's result backend: the store's Redis (in Celery's Sentinel form behind Sentinel).

    None (no results) on a Redis Cluster store: Celery's Redis backend cannot use one.
    """
    if settings.store_is_cluster:
        return None
    target = settings.store_sentinel
    return settings.redis_url if target is None else target.kombu_url()


def _sentinel_options(settings: Settings, target: SentinelTarget) -> dict[str, Any]:
    """Transport options of a kombu / Celery Sentinel connection to ``target``."""
    return {
        "master_name": target.master_name,
        "sentinel_kwargs": sentinel_kwargs(settings.clix_redis_sentinel_password),
    }


def is_amqp(settings: Settings) -> bool:
    """Whether the broker is RabbitMQ (AMQP)."""
    return settings.broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))


def _amqp_config(settings: Settings) -> dict[str, Any]:
    """RabbitMQ: a durable (quorum by default) trigger queue, publisher confirms.

    Quorum queues replicate and survive a node restart; they do not support the
    global QoS Celery uses by default, which ``worker_detect_quorum_queues``
    (on by default) turns off for us.
    """
    from kombu.entity import Exchange, Queue

    name = settings.clix_queue
    check_delivery_limit(settings, settings.clix_amqp_delivery_limit)
    arguments = amqp_queue_arguments(settings, settings.clix_amqp_delivery_limit)
    exchange = Exchange(name, type="direct", durable=True)  # type: ignore[no-untyped-call]
    queue = Queue(  # type: ignore[no-untyped-call]
        name, exchange, routing_key=name, durable=True, queue_arguments=arguments
    )
    return {
        "task_queues": (queue,),
        # a publish returns only once RabbitMQ has the message
        "broker_transport_options": {"confirm_publish": True},
    }


def amqp_dead_letter_names(queue: str) -> tuple[str, str]:
    """The dead-letter exchange and the parking queue of the trigger queue ``queue``."""
    return f"{queue}.dlx", f"{queue}.redelivery-limit"


def amqp_queue_arguments(settings: Settings, delivery_limit: int) -> dict[str, Any]:
    """Arguments of the trigger queue.

    A quorum queue gets an explicit ``x-delivery-limit`` and dead-letters what
    passes it to :func:`amqp_dead_letter_names`' exchange, routed by the queue's
    name, *at least once*: RabbitMQ keeps the message in the trigger queue until
    the parking queue confirms it (at-most-once, the default, can lose it in
    transit), which requires ``x-overflow: reject-publish`` (no length limit is
    set, so nothing is ever refused for it). A classic queue has no delivery
    limit and never drops a requeued message: only its type is declared.
    """
    arguments: dict[str, Any] = {"x-queue-type": settings.clix_amqp_queue_type}
    if settings.clix_amqp_queue_type != "quorum" or delivery_limit == 0:
        return arguments
    exchange, _ = amqp_dead_letter_names(settings.clix_queue)
    arguments.update(
        {
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": exchange,
            "x-dead-letter-routing-key": settings.clix_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    )
    return arguments


def amqp_dead_letter_queue(settings: Settings) -> Any:
    """The parking queue (a kombu ``Queue`` bound to the dead-letter exchange).

    Same type as the trigger queue, with an explicit delivery limit of its own
    (else 4.x applies 20) and no dead-letter route: nothing is requeued from it
    on purpose. Never ``-1``: RabbitMQ 3.x drops a message at its first requeue
    under a negative limit (4.x reads it as "unlimited").
    """
    from kombu.entity import Exchange, Queue

    exchange_name, name = amqp_dead_letter_names(settings.clix_queue)
    arguments: dict[str, Any] = {"x-queue-type": settings.clix_amqp_queue_type}
    if settings.clix_amqp_queue_type == "quorum":
        arguments["x-delivery-limit"] = _PARKING_DELIVERY_LIMIT
    exchange = Exchange(exchange_name, type="direct", durable=True)  # type: ignore[no-untyped-call]
    return Queue(  # type: ignore[no-untyped-call]
        name,
        exchange,
        routing_key=settings.clix_queue,
        durable=True,
        queue_arguments=arguments,
    )


def check_delivery_limit(settings: Settings, delivery_limit: int) -> None:
    """Refuse a broker limit RabbitMQ would reach before our own redelivery limit.

    Only quorum queues have one; a classic queue is never checked.
    """
    if settings.clix_amqp_queue_type != "quorum":
        return
    if delivery_limit < 0:
        raise ConfigurationError(
            "the RabbitMQ delivery limit must not be negative: RabbitMQ 3.x drops a message "
            "at its first requeue then"
        )
    if 0 < delivery_limit <= settings.clix_redelivery_limit:
        raise ConfigurationError(
            f"CLIX_REDELIVERY_LIMIT ({settings.clix_redelivery_limit}) must be below the "
            f"RabbitMQ delivery limit ({delivery_limit}): RabbitMQ would dead-letter a message "
            "before the worker counts it as poison"
        )


def app_settings(celery_app: Celery) -> Settings:
    """The settings an app was configured with (``celery_config``), else the environment's."""
    settings = celery_app.conf.get("clix_settings")
    return settings if isinstance(settings, Settings) else get_settings()


def _make_app() -> Celery:
    app = ClixCelery("clix_trigger_worker")
    app.conf.update(celery_config(get_settings()))
    return app


app: Celery = _make_app()
