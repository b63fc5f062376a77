"""Real processes for integration tests: Redis, the sandbox, Celery workers, the CLI.

Each is started on a free loopback port, waits until it answers, and is
stopped (SIGTERM, then SIGKILL of its whole process group) by the fixture that
made it. Nothing here mocks anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from worker.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]

#: Settings under which the test fleet runs: quick retries, short leases.
FAST_SETTINGS = {
    "CLIX_MAX_ATTEMPTS": "3",
    "CLIX_BACKOFF_INITIAL_S": "0.05",
    "CLIX_BACKOFF_MAX_S": "0.2",
    "CLIX_RETRY_DEADLINE_S": "10",
    "CLIX_REQUEST_TIMEOUT_S": "3",
    "CLIX_RETRY_AFTER_MAX_S": "1",
    "CLIX_LEASE_S": "8",
    "CLIX_RATE_LIMIT_MAX_WAIT_S": "2",
    "CLIX_RECONCILE_GRACE_S": "3",
    "CLIX_RECONCILE_INTERVAL_S": "1",
}


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment of a child: ours without CLIX_/REDIS_/CELERY_ settings, plus overrides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLIX_", "REDIS_URL", "CELERY_", "FLOWER_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def run_python(env: dict[str, str], code: str, *args: str, wrap: list[str] | None = None) -> str:
    """Run ``code`` in a Python process of its own (``wrap``: a command in front); its stdout.

    Fails the test, with the child's stderr, when the child fails.
    """
    done = subprocess.run(
        [*(wrap or []), sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # pool children that outlived their parent
    if proc.poll() is None:
        proc.wait(timeout=10)


class SandboxProcess:
    """``python -m worker sandbox`` as a child process, with its control API."""

    def __init__(self, workdir: Path, project_id: str, api_key: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"sandbox-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "sandbox",
                "--port",
                str(self.port),
                "--project-id",
                project_id,
                "--quiet",
                *args,
            ],
            env=clean_env(CLIX_SANDBOX_API_KEY=api_key),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_until(self._healthy, 15, "the sandbox to answer")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sandbox exited: {self.log_path.read_text()}")
        try:
            return self.http.get("/_sandbox/health").status_code == 200
        except httpx.TransportError:
            return False

    def requests(self, campaign_id: str | None = None) -> list[dict[str, Any]]:
        """Every request the sandbox saw (for one campaign)."""
        params = {"campaign_id": campaign_id} if campaign_id else {}
        return list(self.http.get("/_sandbox/requests", params=params).json()["requests"])

    def in_flight(self, campaign_id: str | None = None) -> list[dict[str, Any]]:
        """Requests that arrived and are not answered yet (held by latency or a script)."""
        params = {"campaign_id": campaign_id} if campaign_id else {}
        return list(self.http.get("/_sandbox/in_flight", params=params).json()["in_flight"])

    def script(self, campaign_id: str, *responses: dict[str, Any]) -> None:
        """Queue scripted answers for a campaign (consumed first, in order)."""
        reply = self.http.post(
            "/_sandbox/script", json={"campaign_id": campaign_id, "responses": list(responses)}
        )
        reply.raise_for_status()

    def configure(self, **config: Any) -> None:
        """Change live faults (fail_rate, latency_ms...)."""
        self.http.post("/_sandbox/config", json=config).raise_for_status()

    def stop(self) -> None:
        """Stop the sandbox."""
        self.http.close()
        _stop(self.proc)
        self._log.close()


class WorkerProcess:
    """``celery -A worker worker`` as a child process in its own process group.

    ``pool`` / ``concurrency`` of ``None`` leave the flag out (the app's
    defaults apply); ``app``, ``loglevel`` and ``cluster=True`` (mingle, gossip
    and heartbeat left on, as the README's plain command runs) serve the benches.
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        *,
        queue: str,
        concurrency: int | None = 2,
        pool: str | None = "prefork",
        name: str | None = None,
        app: str = "worker",
        loglevel: str = "INFO",
        cluster: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.log_path = workdir / f"worker-{self.name}.log"
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "celery", "-A", app, "worker"]
        if pool is not None:
            command += ["-P", pool]
        if concurrency is not None:
            command += ["-c", str(concurrency)]
        command += ["-Q", queue, "-n", f"{self.name}@%h", f"--loglevel={loglevel}"]
        if not cluster:
            command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        self.proc = subprocess.Popen(
            [*command, *extra_args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
        wait_until(self._ready, 60, f"worker {self.name} to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited ({self.proc.returncode}): {self.log()[-3000:]}")
        return " ready." in self.log()

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once (a machine dying)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        """Warm shutdown, then make sure nothing of it is left."""
        _stop(self.proc, timeout_s=30)
        self._log.close()


def cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m worker ARGS`` and return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    """Run a CLI verb with ``--json`` and parse its output."""
    done = cli(env, *args, "--json")
    assert done.stdout.strip(), f"no output from {args}: {done.stderr}"
    return json.loads(done.stdout)


def redis_dump(url: str) -> str:
    """Every key and value of a Redis database, as text (for grepping secrets)."""
    conn = redis.Redis.from_url(url)
    parts = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if kind == "string":
            value: Any = conn.get(key)
        elif kind == "hash":
            value = conn.hgetall(key)
        elif kind == "list":
            value = conn.lrange(key, 0, -1)
        elif kind == "set":
            value = conn.smembers(key)
        elif kind == "zset":
            value = conn.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    conn.close()
    return "\n".join(parts)
