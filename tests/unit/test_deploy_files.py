"""docker-compose.yml and Procfile run the commands the README documents, safely."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_compose_redis_persists_with_aof_and_never_evicts() -> None:
    redis = _compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["volumes"]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_compose_flower_refuses_to_start_without_basic_auth() -> None:
    flower = _compose()["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_compose_worker_scales_and_sandbox_is_opt_in() -> None:
    services = _compose()["services"]
    assert "container_name" not in services["worker"]  # --scale needs generated names
    # a process uses one core at most: by default one per core of a 2-core machine
    assert services["worker"]["deploy"]["replicas"] == "${WORKER_REPLICAS:-2}"
    assert services["worker"]["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert services["sandbox"]["profiles"] == ["sandbox"]


def test_procfile_runs_the_documented_commands() -> None:
    procfile = _procfile()
    readme = (ROOT / "README.md").read_text()
    assert procfile["worker"].startswith("celery -A worker worker")
    assert procfile["flower"].startswith("celery -A worker flower")
    assert "celery -A worker worker" in readme
    assert "celery -A worker flower" in readme


def test_deploy_commands_run_the_default_pool_at_its_concurrency() -> None:
    from config.celery_app import DEFAULT_WORKER_CONCURRENCY, app

    compose = _compose()["services"]["worker"]["command"]
    procfile = _procfile()["worker"]
    assert app.conf.worker_pool == "threads"
    for command in (" ".join(compose), procfile):
        assert "-P " not in command
        assert "--pool" not in command
    assert not any(part.startswith(("--concurrency", "-c")) for part in compose)
    assert f"--concurrency=${{WORKER_CONCURRENCY:-{DEFAULT_WORKER_CONCURRENCY}}}" in procfile


def test_no_secret_is_baked_into_the_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "CLIX_API_KEY" not in dockerfile
    assert "USER " in dockerfile
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
