"""The ``celery -A worker`` entry point: the Celery app, ready to run triggers.

Importing this package registers ``trigger_campaign``, installs the
dead-lettering consumer and a start-up check. A worker refuses to start when it
lacks the Clix credentials (exit code 78, ``EX_CONFIG``) or its settings are
invalid or contradict each other (exit code 2, as for every command), naming
the variable, instead of failing at the first send. Flower (``celery -A worker
flower``) imports this too but skips the credentials check: it sends nothing.

It also imports ``worker.logs``, which formats the log handlers Celery sets up
(JSON lines or text, as ``CLIX_LOG_FORMAT`` says) and masks the API key in them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import bootsteps
from celery.signals import worker_process_init, worker_process_shutdown

from config.connections import store_client
from config.settings import ConfigurationError, Settings, get_settings

try:
    import tasks  # noqa: F401 - registers trigger_campaign on the app
    from config.celery_app import app
    from tasks import context
    from worker import logs as _logs  # noqa: F401 - formats the handlers Celery sets up
    from worker.consumption import BreakerConsumption
    from worker.metrics import MetricsServer
    from worker.readiness import eviction_finding, persistence_finding
    from worker.reconciliation import Reconciliation
    from worker.scheduling import Scheduling
except ConfigurationError as _exc:
    # Invalid settings: one clear line instead of an import traceback, for the
    # worker, Flower and the CLI alike (exit 2: fix the configuration).
    sys.stderr.write(f"clix-worker: invalid configuration: {_exc}\n")
    raise SystemExit(2) from None

__all__ = ["EX_CONFIG", "app"]

logger = logging.getLogger("clix.worker")

#: Exit code of a worker refused at start-up for its configuration (sysexits.h).
EX_CONFIG = 78

app.conf.worker_consumer = "worker.consumer:DeadLetteringConsumer"
# httpx logs every request at INFO; the task logs one structured line per outcome.
logging.getLogger("httpx").setLevel(logging.WARNING)


class StartupCheck(bootsteps.Step):  # type: ignore[misc]
    """Refuse to start a worker that could not send, and warn about a lossy Redis."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        try:
            settings = get_settings()
            settings.require_credentials()
            plans = context.plan_registry(settings.clix_plans)  # PlanError is a ConfigurationError
        except ConfigurationError as exc:
            sys.stderr.write(f"clix-worker: cannot start: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(EX_CONFIG) from None
        if settings.clix_plans:
            logger.info("loaded %d trigger plan(s) from CLIX_PLANS", len(plans))
        warn_about_redis(settings)
        super().__init__(parent, **kwargs)


def warn_about_redis(settings: Settings) -> None:
    """Log a warning when the store's Redis may lose data (no persistence, or eviction on).

    The same findings as ``clix-worker check`` (:mod:`worker.readiness`), which
    refuses such a store; a worker only warns, so a development Redis still runs.
    """
    try:
        conn = store_client(settings, decode_responses=True, retry=False)
        findings = [persistence_finding(conn), eviction_finding(conn)]
        conn.close()
    except Exception as exc:  # noqa: BLE001 - the worker starts anyway; check names it
        logger.info("could not read the Redis configuration (%s)", type(exc).__name__)
        return
    for finding in findings:
        if not finding.ok:
            logger.warning("%s: %s", finding.name, finding.detail)
        elif not finding.verified:
            logger.info("%s: %s", finding.name, finding.detail)


app.steps["worker"].add(StartupCheck)
# Before the pool forks: multiprocess metric files; then /metrics on CLIX_METRICS_PORT.
app.steps["worker"].add(MetricsServer)
app.steps["consumer"].add(BreakerConsumption)
app.steps["consumer"].add(Reconciliation)
app.steps["consumer"].add(Scheduling)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _build_context(**_: Any) -> None:
    # After fork: each pool process gets its own Redis and httpx pools.
    context.reset()
    context.current()


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _close_context(**_: Any) -> None:
    context.reset()
