"""Order of the whole suite: the longest integration tests start first.

``pytest -n 2`` runs with ``--dist loadgroup --no-loadscope-reorder`` (pyproject's addopts):
each test, or each ``xdist_group``, is a unit of work handed to whichever worker is free, in
collection order. Started late, a test of a minute would run alone at the end of the suite,
so the longest ones (the figures of ``pytest --durations``) come first, then the rest of the
integration tests, then the unit tests, which fill the gaps at the end. The order changes
nothing a test proves: each sets up what it needs (its own Redis, queue, key prefix).
"""

from __future__ import annotations

import pytest

#: Node id prefixes, longest first (about 130, 75, 55, 35, 30, 25, 20 s on a 2-core machine).
LONGEST_FIRST = (
    "tests/integration/test_bench_suite.py",  # with test_chaos.py: xdist_group "cpu_heavy"
    "tests/integration/test_chaos.py",
    "tests/integration/test_recovery.py::test_whole_worker_killed",
    "tests/integration/test_recovery.py::test_trigger_whose_pool_process_died",
    "tests/integration/test_production_redis_tls.py",  # xdist_group: module fixtures
    "tests/integration/test_recovery.py::test_sigterm_during_a_batch",
    "tests/integration/test_sentinel.py",  # xdist_group: module fixtures
    "tests/integration/test_lose_nothing.py::test_sigkilling_the_worker_main_process",
    "tests/integration/test_limits.py::test_a_20_s_outage",
    "tests/integration/test_rabbitmq.py::test_rabbitmq_a_message_parked",
    "tests/integration/test_lose_nothing.py::test_send_task_through_the_project_app",
    "tests/integration/test_limits.py::test_revoked_key_pauses_the_fleet",
    "tests/integration/test_lose_nothing.py::test_broker_restarted_without_persistence",
    "tests/integration/test_store_faults.py::test_store_dropping_connections",
    "tests/integration/test_limits.py::test_429_bursts",
    "tests/integration/test_scheduling.py::test_scheduled_triggers_are_sent_once",
    "tests/integration/test_recovery.py::test_a_slow_delivery_ends",
)


def _rank(item: pytest.Item) -> tuple[int, int]:
    nodeid = item.nodeid
    for rank, prefix in enumerate(LONGEST_FIRST):
        if nodeid.startswith(prefix):
            return (0, rank)
    return (1, 0) if nodeid.startswith("tests/integration/") else (2, 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first, then the other integration tests, then the unit tests (stable)."""
    items.sort(key=_rank)
