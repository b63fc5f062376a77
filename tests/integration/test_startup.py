"""A worker that could not send refuses to start; producers and inspection need no key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import enqueue_trigger
from tests.integration.conftest import Fleet
from tests.integration.processes import cli, cli_json
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration


def _start_worker(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "solo"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("missing", ["CLIX_API_KEY", "CLIX_PROJECT_ID"])
def test_worker_without_credentials_refuses_to_start_naming_the_variable(
    fleet: Fleet, tmp_path: Path, missing: str
) -> None:
    env = {k: v for k, v in fleet.env.items() if k != missing}
    refused = _start_worker(env, tmp_path)
    assert refused.returncode == 78
    assert f"{missing} must be set" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_worker_with_contradicting_settings_refuses_to_start_with_the_reason(
    fleet: Fleet, tmp_path: Path
) -> None:
    refused = _start_worker({**fleet.env, "CLIX_LEASE_S": "100"}, tmp_path)
    assert refused.returncode == 2
    assert "CLIX_LEASE_S=100 must stay under CLIX_VISIBILITY_TIMEOUT_S" in refused.stderr
    assert "Traceback" not in refused.stderr
    plain_http = _start_worker({**fleet.env, "CLIX_BASE_URL": "http://api.clix.so"}, tmp_path)
    assert plain_http.returncode == 2
    assert "CLIX_BASE_URL" in plain_http.stderr


def test_producer_and_inspection_commands_need_no_credentials(fleet: Fleet, campaign: str) -> None:
    env = {k: v for k, v in fleet.env.items() if k not in ("CLIX_API_KEY", "CLIX_PROJECT_ID")}
    enqueued = cli(env, "enqueue", campaign, "no-key", "-p", "n=1", "--json")
    assert enqueued.returncode == 0, enqueued.stderr
    enqueue_trigger(campaign, "no-key").get(timeout=30)
    status = cli_json(env, "status", campaign, "no-key")  # finds the project by scanning
    assert status["state"] == "done"
    assert cli(env, "dlq", "list", "--json").returncode == 0


def _findings(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    return {f["name"]: f for f in json.loads(done.stdout)["findings"]}


def test_check_passes_only_when_settings_redis_and_broker_are_all_fine(
    fleet: Fleet, tmp_path: Path
) -> None:
    with RedisServer(directory=tmp_path / "durable") as durable:  # AOF on, noeviction
        env = {**fleet.env, "REDIS_URL": durable.url}
        ok = cli(env, "check", "--json")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)["ok"] is True
        assert {name: f["ok"] for name, f in _findings(ok).items()} == {
            "settings": True,
            "credentials": True,
            "redis": True,
            "redis_tls": True,
            "redis_user": True,
            "redis_persistence": True,
            "redis_eviction": True,
            "broker": True,
        }
        no_key = {k: v for k, v in env.items() if k != "CLIX_API_KEY"}
        assert cli(no_key, "check").returncode == 1
        assert cli(no_key, "check", "--no-worker").returncode == 0
    dead = {**fleet.env, "REDIS_URL": "redis://127.0.0.1:1/0", "CELERY_BROKER_URL": ""}
    down = cli(dead, "check", "--json", "--timeout", "1")
    assert down.returncode == 1
    assert _findings(down)["redis"]["ok"] is False


def test_check_refuses_a_store_without_persistence_or_with_eviction(
    fleet: Fleet, tmp_path: Path
) -> None:
    volatile = cli(fleet.env, "check", "--json")  # the session's Redis: no AOF, no RDB
    assert volatile.returncode == 1
    assert _findings(volatile)["redis_persistence"]["ok"] is False
    assert "appendonly" in str(_findings(volatile)["redis_persistence"]["detail"])
    assert "redis_persistence  FAILED" in cli(fleet.env, "check").stdout

    with RedisServer(directory=tmp_path / "evicting") as evicting:
        evicting.client().config_set("maxmemory-policy", "allkeys-lru")
        done = cli({**fleet.env, "REDIS_URL": evicting.url}, "check", "--json")
    assert done.returncode == 1
    assert _findings(done)["redis_eviction"]["ok"] is False
    assert "allkeys-lru" in str(_findings(done)["redis_eviction"]["detail"])
    assert _findings(done)["redis_persistence"]["ok"] is True
