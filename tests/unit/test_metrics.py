"""Metrics: labelled counting, bounded labels, the Redis gauges, multiprocess sums."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
from kombu.connection import Connection
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from config.keys import KeySpace
from config.settings import Settings
from tasks import metrics
from tasks.breaker import CircuitBreaker, Outcome
from tasks.dlq import DeadLetterQueue
from tasks.errors import (
    AuthenticationFailed,
    ClixError,
    NetworkError,
    RateLimited,
    Rejected,
    ServerError,
)
from tasks.metrics import (
    DEAD_LETTER_REASONS,
    MULTIPROC_ENV,
    OUTCOMES,
    STATUSES,
    TriggerMetrics,
    status_of,
)
from tasks.state_metrics import RedisStateCollector, kombu_queue_probe, redis_queue_probe
from tests.unit.conftest import PROJECT_ID
from worker.metrics import build_registry, metrics_port, serve_metrics
from worker.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET_CAMPAIGN = "camp-9f3e-secret-campaign"
SECRET_KEY = "order-77-secret-idempotency-key"


@pytest.fixture
def trigger_metrics() -> TriggerMetrics:
    return TriggerMetrics(CollectorRegistry())


@pytest.fixture
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process-wide metrics in memory (a developer's shell may set the variable)."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _triggers(registry: CollectorRegistry, outcome: str, reason: str = "none") -> float | None:
    return _value(registry, "clix_triggers_total", outcome=outcome, reason=reason)


def _label_values(registry: CollectorRegistry) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            for name, value in sample.labels.items():
                found.setdefault(name, set()).add(value)
    return found


# --- counting -----------------------------------------------------------------


def test_each_outcome_increments_its_own_series(trigger_metrics: TriggerMetrics) -> None:
    registry = trigger_metrics.registry
    for _ in range(3):
        trigger_metrics.count_outcome("sent")
    trigger_metrics.count_outcome("deduplicated")
    trigger_metrics.count_outcome("attempt_failed")  # the delivery's name for a failed attempt
    trigger_metrics.count_outcome("attempt_failed")
    trigger_metrics.count_outcome("rate_limited")
    trigger_metrics.count_outcome("dead_lettered", "rejected")
    trigger_metrics.count_outcome("dead_lettered", "retries_exhausted")
    trigger_metrics.count_outcome("ambiguous_duplicate")

    assert _triggers(registry, "sent") == 3
    assert _triggers(registry, "deduplicated") == 1
    assert _triggers(registry, "retried") == 2
    assert _triggers(registry, "rate_limited") == 1
    assert _triggers(registry, "dead_lettered", "rejected") == 1
    assert _triggers(registry, "dead_lettered", "retries_exhausted") == 1
    assert _triggers(registry, "dead_lettered", "invalid_payload") == 0
    assert _triggers(registry, "ambiguous_duplicate") == 1
    assert _triggers(registry, "attempt_failed") is None


def test_known_series_exist_at_zero_before_any_event(trigger_metrics: TriggerMetrics) -> None:
    registry = trigger_metrics.registry
    for outcome in OUTCOMES:
        if outcome != "dead_lettered":
            assert _triggers(registry, outcome) == 0, outcome
    for reason in DEAD_LETTER_REASONS:
        assert _triggers(registry, "dead_lettered", reason) == 0, reason
    for status in STATUSES:
        assert _value(registry, "clix_request_duration_seconds_count", status=status) == 0


def test_unknown_label_values_are_mapped_never_passed_through(
    trigger_metrics: TriggerMetrics,
) -> None:
    registry = trigger_metrics.registry
    trigger_metrics.count_outcome(SECRET_CAMPAIGN)
    trigger_metrics.count_outcome("dead_lettered", SECRET_KEY)
    trigger_metrics.count_outcome("dead_lettered")
    trigger_metrics.count_outcome("sent", reason=SECRET_KEY)  # only dead_lettered has a reason
    trigger_metrics.observe_request(0.1, f"campaign {SECRET_CAMPAIGN}")

    assert _triggers(registry, "other") == 1
    assert _triggers(registry, "dead_lettered", "other") == 2
    assert _triggers(registry, "sent") == 1
    assert _value(registry, "clix_request_duration_seconds_count", status="other") == 1
    labels = _label_values(registry)
    assert labels["outcome"] <= {*OUTCOMES, "other"}
    assert labels["reason"] <= {*DEAD_LETTER_REASONS, "none", "other"}
    assert labels["status"] <= {*STATUSES, "other"}
    text = generate_latest(registry).decode()
    assert SECRET_CAMPAIGN not in text
    assert SECRET_KEY not in text


def test_request_latency_lands_in_its_bucket(trigger_metrics: TriggerMetrics) -> None:
    registry = trigger_metrics.registry
    trigger_metrics.observe_request(0.004, "2xx")
    trigger_metrics.observe_request(0.2, "2xx")
    trigger_metrics.observe_request(12.0, "network")

    def bucket(status: str, le: str) -> float | None:
        return _value(registry, "clix_request_duration_seconds_bucket", status=status, le=le)

    assert bucket("2xx", "0.005") == 1
    assert bucket("2xx", "0.25") == 2
    assert bucket("network", "10.0") == 0
    assert bucket("network", "+Inf") == 1
    assert _value(registry, "clix_request_duration_seconds_sum", status="2xx") == pytest.approx(
        0.204
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "2xx"),
        (ServerError("boom", status_code=503), "5xx"),
        (RateLimited("slow down", retry_after_s=1.0), "429"),
        (Rejected("bad", status_code=400), "4xx"),
        (AuthenticationFailed("who", status_code=401), "4xx"),
        (NetworkError("dropped", ambiguous=True), "network"),
        (Rejected("redirect", status_code=302), "other"),
    ],
)
def test_status_of_classifies_a_request(error: ClixError | None, status: str) -> None:
    assert status_of(error) == status


def test_module_functions_count_in_the_process_registry(single_process: None) -> None:
    registry = metrics.registry()
    before = _triggers(registry, "dead_lettered", "redelivery_limit") or 0.0
    requests_before = _value(registry, "clix_request_duration_seconds_count", status="5xx") or 0.0

    metrics.count_outcome("dead_lettered", "redelivery_limit")
    metrics.observe_request(0.05, "5xx")

    assert _triggers(registry, "dead_lettered", "redelivery_limit") == before + 1
    assert (
        _value(registry, "clix_request_duration_seconds_count", status="5xx") == requests_before + 1
    )


def test_a_metrics_fault_never_reaches_the_delivery(
    single_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(TriggerMetrics, "count_outcome", broken)
    monkeypatch.setattr(TriggerMetrics, "observe_request", broken)
    metrics.count_outcome("sent")  # does not raise
    metrics.observe_request(0.1, "2xx")


# --- gauges read from Redis ----------------------------------------------------------


@pytest.fixture
def dead_lettered(dlq: DeadLetterQueue) -> str:
    entry = dlq.new_entry(
        reason="rejected",
        error="Clix answered 400",
        trigger={
            "campaign_id": SECRET_CAMPAIGN,
            "idempotency_key": SECRET_KEY,
            "properties": {"customer_name": "Ada Lovelace"},
        },
        status_code=400,
    )
    return dlq.add(entry)


def _state_registry(collector: RedisStateCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_collector_reads_dlq_depth_breaker_and_queue(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace, settings: Settings, dead_lettered: str
) -> None:
    breaker = CircuitBreaker(fake_redis, keys.breaker(PROJECT_ID))
    assert breaker.record(Outcome.AUTH) == "opened"
    queue = settings.clix_queue
    fake_redis.lpush(queue, "m1", "m2")
    fake_redis.lpush(f"{queue}\x06\x169", "m3")  # kombu's list for priority step 9
    fake_redis.hset("unacked", "delivery-tag-1", "m0")
    registry = _state_registry(
        RedisStateCollector(
            fake_redis, keys, breaker=breaker, queue_probe=redis_queue_probe(fake_redis, queue)
        )
    )

    assert _value(registry, "clix_dlq_depth") == 1
    assert _value(registry, "clix_breaker_state", reason="auth") == 2
    assert _value(registry, "clix_queue_depth") == 3
    assert _value(registry, "clix_unacked_messages") == 1
    assert _value(registry, "clix_redis_up") == 1
    text = generate_latest(registry).decode()
    assert SECRET_CAMPAIGN not in text
    assert SECRET_KEY not in text
    assert "Ada" not in text


@pytest.mark.parametrize(
    ("outcome", "probe_s", "reason", "level"),
    [
        (None, 5.0, "none", 0),
        (Outcome.AUTH, 0.0, "auth", 1),  # probe time reached: half-open
        (Outcome.FAILURE, 5.0, "outage", 2),
    ],
)
def test_breaker_state_levels(
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
    outcome: Outcome | None,
    probe_s: float,
    reason: str,
    level: int,
) -> None:
    breaker = CircuitBreaker(
        fake_redis,
        keys.breaker(PROJECT_ID),
        window_s=1,
        min_samples=1,
        probe_s=probe_s,
        auth_probe_s=probe_s,
    )
    if outcome is not None:
        breaker.record(outcome)
    registry = _state_registry(RedisStateCollector(fake_redis, keys, breaker=breaker))

    assert _value(registry, "clix_breaker_state", reason=reason) == level
    assert _value(registry, "clix_dlq_depth") == 0
    assert _value(registry, "clix_queue_depth") is None  # no probe given


def test_collector_reports_redis_down_instead_of_failing(
    fake_server: fakeredis.FakeServer,
    fake_redis: fakeredis.FakeRedis,
    keys: KeySpace,
    settings: Settings,
    dead_lettered: str,
) -> None:
    breaker = CircuitBreaker(fake_redis, keys.breaker(PROJECT_ID))
    collector = RedisStateCollector(
        fake_redis,
        keys,
        breaker=breaker,
        queue_probe=redis_queue_probe(fake_redis, settings.clix_queue),
    )
    fake_server.connected = False
    registry = _state_registry(collector)

    assert _value(registry, "clix_redis_up") == 0
    assert _value(registry, "clix_dlq_depth") is None
    assert _value(registry, "clix_queue_depth") is None


def test_kombu_probe_counts_messages_of_a_non_redis_broker() -> None:
    queue = "clix.metrics.unit"
    with Connection("memory://") as conn:  # type: ignore[no-untyped-call]
        simple = conn.SimpleQueue(queue)
        simple.put({"n": 1})
        simple.put({"n": 2})
        assert kombu_queue_probe("memory://", queue)().ready == 2
        simple.clear()
        simple.close()


def test_kombu_probe_of_an_unreachable_broker_leaves_the_gauge_out(
    fake_redis: fakeredis.FakeRedis, keys: KeySpace
) -> None:
    probe = kombu_queue_probe(f"amqp://guest:guest@127.0.0.1:{free_port()}//", "q", timeout_s=1)
    registry = _state_registry(RedisStateCollector(fake_redis, keys, queue_probe=probe))

    assert _value(registry, "clix_queue_depth") is None
    assert _value(registry, "clix_redis_up") == 1


def test_collector_from_settings_survives_an_unreachable_redis(
    make_settings: Any,
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    registry = _state_registry(RedisStateCollector.from_settings(settings, timeout_s=1))

    assert _value(registry, "clix_redis_up") == 0
    assert _value(registry, "clix_queue_depth") is None


# --- serving ------------------------------------------------------------------------


def test_metrics_port_reads_the_setting_or_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "clix_metrics_port" in type(settings).model_fields:
        assert metrics_port(settings.model_copy(update={"clix_metrics_port": 9808})) == 9808
        return
    monkeypatch.setenv("CLIX_METRICS_PORT", "9808")
    assert metrics_port(settings) == 9808
    monkeypatch.setenv("CLIX_METRICS_PORT", "")
    assert metrics_port(settings) is None


def test_served_page_sums_the_files_and_adds_the_gauges(
    counted: Path, fake_redis: fakeredis.FakeRedis, keys: KeySpace, dead_lettered: str
) -> None:
    registry = build_registry(directory=str(counted), state=RedisStateCollector(fake_redis, keys))
    port = free_port()
    server, thread = serve_metrics(port, addr="127.0.0.1", registry=registry)
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert 'clix_triggers_total{outcome="sent",reason="none"} 7.0' in page
    assert "clix_dlq_depth 1.0" in page
    assert SECRET_CAMPAIGN not in page


# --- multiprocess mode -------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIX_", "PROMETHEUS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _python(code: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=_env(**env),
        cwd=cwd,  # no .env file there
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _output(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


_COUNT = """
from tasks.metrics import count_outcome, observe_request
for _ in range({sent}):
    count_outcome("sent")
observe_request(0.02, "2xx")
"""


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory two processes counted in at once: 3 and 4 ``sent``, one request each."""
    files = tmp_path_factory.mktemp("multiproc")
    cwd = tmp_path_factory.mktemp("cwd")
    env = {MULTIPROC_ENV: str(files)}
    running = [_python(_COUNT.format(sent=n), cwd, **env) for n in (3, 4)]
    for proc in running:
        _output(proc)
    return files


def _aggregate(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def test_two_processes_writing_one_directory_are_summed(counted: Path) -> None:
    registry = _aggregate(counted)

    assert _triggers(registry, "sent") == 7
    assert _value(registry, "clix_request_duration_seconds_count", status="2xx") == 2
    assert _triggers(registry, "dead_lettered", "rejected") == 0
    assert len(list(counted.glob("counter_*.db"))) == 2


# The worker's case: prometheus_client is imported before the directory is known
# (`celery worker` loads Flower's CLI plugin, which imports it), the main process
# prepares the directory, then forks pool processes that count.
_FORKED_POOL = """
import json, multiprocessing, os
import prometheus_client  # noqa: F401 - imported first, in single-process mode
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from tasks import metrics
from worker.metrics import prepare_multiprocess_dir

directory = prepare_multiprocess_dir(create=True)

def child(n):
    for _ in range(n):
        metrics.count_outcome("sent")
    metrics.count_outcome("attempt_failed")
    metrics.observe_request(0.03, "2xx")

ctx = multiprocessing.get_context("fork")
pool = [ctx.Process(target=child, args=(n,)) for n in (3, 4)]
for p in pool:
    p.start()
for p in pool:
    p.join()
registry = CollectorRegistry()
MultiProcessCollector(registry, path=directory)
print(json.dumps({
    "directory": directory,
    "sent": registry.get_sample_value("clix_triggers_total", {"outcome": "sent", "reason": "none"}),
    "retried": registry.get_sample_value(
        "clix_triggers_total", {"outcome": "retried", "reason": "none"}),
    "requests": registry.get_sample_value(
        "clix_request_duration_seconds_count", {"status": "2xx"}),
    "files": sorted(os.listdir(directory)),
}))
"""


def test_forked_pool_processes_are_summed_in_a_fresh_directory(tmp_path: Path) -> None:
    result = json.loads(_output(_python(_FORKED_POOL, tmp_path)))

    assert result["sent"] == 7
    assert result["retried"] == 2
    assert result["requests"] == 2
    assert len([f for f in result["files"] if f.startswith("counter_")]) == 3  # main + 2 forks
    assert not Path(result["directory"]).exists()  # the temporary directory went at exit


def test_an_operator_directory_is_wiped_of_stale_files_and_kept(
    tmp_path: Path, counted: Path
) -> None:
    files = tmp_path / "metrics"
    shutil.copytree(counted, files)  # the files of a previous run: 7 sent
    (files / "README").write_text("not ours")

    result = json.loads(_output(_python(_FORKED_POOL, tmp_path, **{MULTIPROC_ENV: str(files)})))

    assert result["directory"] == str(files)
    assert result["sent"] == 7
    assert (files / "README").exists()


@pytest.fixture(autouse=True)
def _no_leaked_multiprocess_env() -> Iterator[None]:
    before = os.environ.get(MULTIPROC_ENV)
    yield
    assert os.environ.get(MULTIPROC_ENV) == before
