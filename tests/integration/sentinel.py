"""A throwaway Sentinel deployment: a primary, replicas and three sentinels on free ports.

For the failover test and ``bench/failover.py``. The sentinels notice a dead
primary after ``down_after_ms`` and promote the replica within about a second
or two more; every process and directory is removed by :meth:`SentinelGroup.stop`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis

from worker.redis_server import RedisServer, find_redis_server, free_port

__all__ = ["MASTER_NAME", "SentinelGroup", "sentinel_binary"]

MASTER_NAME = "clixprimary"


def sentinel_binary() -> str | None:
    """A ``redis-server`` that can run as a sentinel (the system one), else None."""
    found = find_redis_server()
    return found[0] if found and found[1] == "system" else None


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)


class _Sentinel:
    """One ``redis-server --sentinel`` process watching the primary."""

    def __init__(
        self, binary: str, directory: Path, primary_port: int, down_after_ms: int, quorum: int
    ) -> None:
        self.port = free_port()
        self.directory = directory
        directory.mkdir(parents=True)
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {max(2000, 3 * down_after_ms)}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.process = subprocess.Popen(
            [binary, str(config), "--sentinel", "--logfile", str(directory / "sentinel.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return _client(self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SentinelGroup:
    """Start with :meth:`start` (or ``with``); :meth:`stop` stops everything it started."""

    def __init__(
        self,
        *,
        down_after_ms: int = 1000,
        replicas: int = 1,
        appendonly: bool = False,
        binary: str | None = None,
    ) -> None:
        found = binary or sentinel_binary()
        if found is None:
            raise RuntimeError("no system redis-server: it is what runs as a sentinel")
        self.binary = found
        self.down_after_ms = down_after_ms
        self.replicas = replicas
        self.appendonly = appendonly
        self.directory = Path(tempfile.mkdtemp(prefix="clix-sentinel-"))
        #: the first primary, then its replicas
        self.servers: list[RedisServer] = []
        self.sentinels: list[_Sentinel] = []

    def start(self, timeout_s: float = 20.0) -> SentinelGroup:
        """Primary, replicas in sync with it, three sentinels (see :meth:`wait_until_watched`)."""
        try:
            for _ in range(1 + self.replicas):
                server = RedisServer(binary=self.binary, appendonly=self.appendonly)
                self.servers.append(server.start())
            primary = self.servers[0].port
            for replica in self.servers[1:]:
                _client(replica.port).replicaof("127.0.0.1", primary)
            self.sentinels = [
                _Sentinel(
                    self.binary,
                    self.directory / f"s{i}",
                    primary,
                    self.down_after_ms,
                    quorum=2,
                )
                for i in range(3)
            ]
            self._wait(self._in_sync, timeout_s, "the replica in sync")
        except BaseException:
            self.stop()
            raise
        return self

    def _in_sync(self) -> bool:
        links = [_client(r.port).info("replication") for r in self.servers[1:]]
        return all(link.get("master_link_status") == "up" for link in links)

    def wait_until_watched(self, timeout_s: float = 20.0) -> None:
        """Wait until every sentinel sees the replica and the two other sentinels.

        They find each other through the primary in a few seconds; only then can
        they agree on a failover. Not part of :meth:`start`, so a test can start
        its workers meanwhile.
        """
        self._wait(self._watched, timeout_s, "every sentinel seeing the replica and the others")

    def _watched(self) -> bool:
        for sentinel in self.sentinels:
            try:
                state = sentinel.client().sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            seen = int(state.get("num-slaves", 0)), int(state.get("num-other-sentinels", 0))
            if seen[0] < self.replicas or seen[1] < 2:
                return False
        return True

    @staticmethod
    def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(0.1)

    def url(self, db: int = 0) -> str:
        """``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/MASTER/DB``."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/{db}"

    def kombu_url(self, db: int = 0) -> str:
        """kombu's ``sentinel://...;sentinel://...`` form (master name given apart)."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/{db}" for s in self.sentinels)

    def replica_client(self) -> redis.Redis:
        """A direct client of the replica that is not the current primary."""
        port = self.master_port()
        for server in self.servers:
            if server.port != port and server.process is not None:
                return _client(server.port)
        raise RuntimeError("no live replica")

    def master_port(self) -> int | None:
        """The primary's port as the first answering sentinel says, else None."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                address = sentinel.client().sentinel_get_master_addr_by_name(MASTER_NAME)
                if address:
                    return int(address[1])
        return None

    def direct_url(self, db: int = 0) -> str:
        """``redis://`` of the current primary (a test's own view; not for the workers)."""
        return f"redis://127.0.0.1:{self.master_port()}/{db}"

    def kill_primary(self) -> int:
        """SIGKILL the current primary (no shutdown, no last write); return its port."""
        self.wait_until_watched()
        port = self.master_port()
        for server in self.servers:
            if server.port == port and server.process is not None:
                server.process.kill()
                server.process.wait()
                return server.port
        raise RuntimeError(f"no primary of ours on port {port}")

    def wait_for_failover(self, old_port: int, timeout_s: float = 30.0) -> float:
        """Wait until a replica was promoted and answers as primary; return the seconds taken."""
        started = time.monotonic()

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            with contextlib.suppress(redis.RedisError):
                role = _client(port).role()
                return bool(role[0] == b"master")
            return False

        self._wait(promoted, timeout_s, "a replica promoted to primary")
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the sentinels and servers, remove every directory."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
