"""The plain ``celery -A worker worker`` runs the pool and pool sizes the benchmarks chose."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from config.celery_app import (
    BROKER_MAX_CONNECTIONS,
    DEFAULT_WORKER_CONCURRENCY,
    DEFAULT_WORKER_POOL,
    celery_config,
)
from config.settings import Settings
from tasks.context import redis_client

PLAIN = ["celery", "-A", "worker", "worker", "--loglevel=INFO"]


def test_plain_command_runs_threads_at_the_default_concurrency(
    make_settings: Callable[..., Settings],
) -> None:
    config = celery_config(make_settings(), argv=PLAIN)
    assert config["worker_pool"] == DEFAULT_WORKER_POOL == "threads"
    assert config["worker_concurrency"] == DEFAULT_WORKER_CONCURRENCY
    assert config["worker_prefetch_multiplier"] == 1


@pytest.mark.parametrize(
    "pool_args", [["-P", "prefork"], ["--pool", "prefork"], ["--pool=prefork"], ["-Pprefork"]]
)
def test_a_pool_named_on_the_command_line_is_not_overridden(
    make_settings: Callable[..., Settings], pool_args: list[str]
) -> None:
    # Celery replaces an explicit `-P prefork` by a configured worker_pool;
    # and `-P prefork` without `-c` must not fork one process per thread slot.
    config = celery_config(make_settings(), argv=[*PLAIN, *pool_args])
    assert "worker_pool" not in config
    assert "worker_concurrency" not in config


def test_connection_caps_leave_room_for_every_thread(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    config = celery_config(settings, argv=PLAIN)
    assert config["broker_transport_options"]["max_connections"] == BROKER_MAX_CONNECTIONS
    assert BROKER_MAX_CONNECTIONS > 4 * DEFAULT_WORKER_CONCURRENCY
    conn = redis_client(settings)
    assert conn.connection_pool.max_connections > 4 * DEFAULT_WORKER_CONCURRENCY
    assert settings.clix_http_pool_size >= DEFAULT_WORKER_CONCURRENCY
    conn.close()
