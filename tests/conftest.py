"""How ``pytest -n 2`` shares the suite between its workers: the longest tests start first.

Under ``-n`` (xdist's default ``--dist load``), the scheduler below hands out units of work,
in collection order, to whichever worker is free.
A unit is one test, or a group of tests that must share a worker (``GROUPS``). The order of
collection puts the longest tests first (``LONGEST_FIRST``, from ``pytest --durations``),
then the other integration tests, then the unit tests, which fill the gaps at the end: a
test of a minute started last would run alone at the end of the suite. (xdist's own
``load`` gave one worker a first chunk of a quarter of the suite: every integration test.)

Groups are named here by node id rather than with ``xdist_group`` markers: xdist 3.8 marks a
grouped test by rewriting ``item._nodeid``, which pytest 9 no longer reads. The order changes
nothing a test proves: each sets up what it needs (its own Redis, queue, key prefix).
"""

from __future__ import annotations

from typing import Any

import pytest

#: Node id prefixes, longest first (about 130, 75, 55, 40, 35, 30, 25, 20 s on 2 cores).
LONGEST_FIRST = (
    "tests/integration/test_bench_suite.py",
    "tests/integration/test_chaos.py",
    "tests/integration/test_recovery.py::test_whole_worker_killed",
    "tests/integration/test_recovery.py::test_trigger_whose_pool_process_died",
    "tests/integration/test_production_redis_tls.py",
    "tests/integration/test_recovery.py::test_sigterm_during_a_batch",
    "tests/integration/test_sentinel.py",
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

#: Integration tests that run on one worker, one after the other: modules whose module
#: fixtures must be made once (the bench run, the TLS server, a Sentinel group), and the bench
#: smoke run with the chaos run (each keeps both cores busy: never side by side). A unit of
#: work is one test otherwise; under tests/unit/, one module.
GROUPS = {
    "tests/integration/test_bench_suite.py": "cpu_heavy",
    "tests/integration/test_chaos.py": "cpu_heavy",
    "tests/integration/test_production_redis_tls.py": "redis_tls",
    "tests/integration/test_sentinel.py": "sentinel",
}


def _rank(item: pytest.Item) -> tuple[int, int]:
    nodeid = item.nodeid
    for rank, prefix in enumerate(LONGEST_FIRST):
        if nodeid.startswith(prefix):
            return (0, rank)
    return (1, 0) if nodeid.startswith("tests/integration/") else (2, 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first, then the other integration tests, then the unit tests (stable)."""
    items.sort(key=_rank)


def _unit_of_work(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    if module.startswith("tests/unit/"):
        return module  # a module of quick tests: one round trip to its worker, not one per test
    return GROUPS.get(module, nodeid)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist load``: one test or one of ``GROUPS`` per unit, in collection order."""
    if config.getvalue("dist") != "load":
        return None  # another --dist on the command line: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirstScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            self.config.option.loadscopereorder = False  # keep the order of collection

        def _split_scope(self, nodeid: str) -> str:
            return _unit_of_work(nodeid)

    return LongestFirstScheduling(config, log)
