"""What a trigger costs in Redis: commands, round trips and bytes, ours apart from the broker's.

The broker and the store are separate servers (:mod:`bench.stack`), so each
server's ``INFO commandstats`` is one side's traffic. Two counts per trigger:

* ``commands``: ``INFO commandstats`` calls. This counts commands run inside a
  Lua script and inside MULTI/EXEC one by one, so it is more than the round trips.
* ``round_trips``: from ``MONITOR``: commands sent by a client, a MULTI ... EXEC
  block counted once, commands run by scripts (``[... lua]``) not counted. A
  pipeline sent without MULTI would count per command (an overestimate).

Producer and worker are counted apart: triggers are published first (the
producer's window: ``enqueue_many``, the bulk path), then the worker starts and
drains them (its start-up, reconciler and breaker-watch traffic is included,
spread over the triggers); the claim and commit scripts are also counted on
their own (``worker_store_trips_per_trigger``). Bytes: ``MEMORY USAGE`` of every
key of the store and the broker before publishing, once queued, and once
delivered; a delivered trigger's ledger record (``bytes_per_remembered_trigger``,
kept ``CLIX_IDEMPOTENCY_TTL_S``) apart from its Celery result
(``bytes_per_result``, kept ``CLIX_RESULT_TTL_S``).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from typing import Any

import redis

from bench.load import typical_trigger
from bench.stack import Stack
from tests.integration.processes import wait_until

#: Ids, numbers and hex in key names, folded so keys of one kind count together.
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{12,}|\d+")


class Monitor(threading.Thread):
    """Counts round trips a Redis server receives (``MONITOR``), until :meth:`stop`."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(name=f"bench-monitor-{port}", daemon=True)
        self._sock = socket.create_connection((host, port), timeout=0.2)
        self._sock.sendall(b"MONITOR\r\n")
        self._stopping = threading.Event()
        self.round_trips: Counter[str] = Counter()
        self.by_key: Counter[str] = Counter()  # "COMMAND key-pattern": who makes the trips
        self._in_multi: set[str] = set()

    def run(self) -> None:
        buffer = b""
        while not self._stopping.is_set():
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                self._count(line.decode("utf-8", errors="replace"))
        self._sock.close()

    def _count(self, line: str) -> None:
        # +1700000000.123456 [0 127.0.0.1:50000] "SET" "k" "v"
        if not line.startswith("+") or "[" not in line or line == "+OK":
            return
        client = line[line.index("[") + 1 : line.index("]")].split(" ", 1)[-1]
        if client == "lua":
            return
        name = line[line.index("]") + 1 :].strip().split(" ", 1)[0].strip('"').upper()
        if client in self._in_multi:
            if name == "EXEC":
                self._in_multi.discard(client)
            return
        if name == "MULTI":
            self._in_multi.add(client)
        self.round_trips[name] += 1
        args = line[line.index("]") + 1 :].strip().split(" ")
        key = args[1].strip('"') if len(args) > 1 and name not in ("EVALSHA", "EVAL") else ""
        if name in ("EVALSHA", "EVAL") and len(args) > 3:
            key = f"{args[1].strip(chr(34))[:8]} {args[3].strip(chr(34))}"  # sha, first key
        self.by_key[f"{name} {_ID.sub('*', key)[:60]}".strip()] += 1

    def stop(self) -> Monitor:
        """Stop reading (``round_trips``: by command, a MULTI standing for its block)."""
        time.sleep(0.3)  # let the last lines arrive
        self._stopping.set()
        self.join(timeout=5)
        return self


def _commandstats(conn: redis.Redis) -> Counter[str]:
    stats = conn.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def _per_trigger(counts: Counter[str], n: int) -> dict[str, Any]:
    by_command = {name: round(calls / n, 2) for name, calls in counts.most_common() if calls}
    return {"total": round(sum(counts.values()) / n, 2), "by_command": by_command}


def _trips(monitor: Monitor, n: int) -> dict[str, Any]:
    trips = _per_trigger(monitor.round_trips, n)
    trips["by_key"] = {k: round(v / n, 2) for k, v in monitor.by_key.most_common(12)}
    return trips


#: Celery's result keys: a cache for ``AsyncResult.get()``, kept ``CLIX_RESULT_TTL_S``
RESULT_PREFIX = b"celery-task-meta-"


def _key_bytes(conn: redis.Redis, results: bool | None = None) -> int:
    """Bytes every key takes (``MEMORY USAGE``, exact): no allocator or client-buffer noise.

    ``results``: True counts Celery's result keys only, False every other key.
    """
    keys = [
        key
        for key in conn.scan_iter(count=1000)
        if results is None or key.startswith(RESULT_PREFIX) == results
    ]
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(int(size or 0) for size in pipe.execute())


def _own_trips_per_trigger(monitor: Monitor, n: int) -> float:
    """Round trips whose first key is a trigger's lease: the claim and the commit scripts.

    The rest of the worker's store traffic is periodic (the breaker watch, the
    schedule mover, the reconciler, once a second each) or connection set-up:
    it does not grow with the triggers.
    """
    return round(sum(c for k, c in monitor.by_key.items() if ":lease:" in k) / n, 2)


def measure(stack: Stack, triggers: int) -> dict[str, Any]:
    """Publish ``triggers`` with the bulk path, drain them with the default worker; count."""
    stack.fresh(0)
    run = stack.producer_run()
    from tasks import enqueue_many

    conns = {side: stack.redis(side) for side in ("store", "broker")}
    servers = {"store": stack.store, "broker": stack.broker}
    memory_before = {side: _key_bytes(c) for side, c in conns.items()}
    results_before = _key_bytes(conns["store"], results=True)
    for conn in conns.values():
        conn.config_resetstat()
    monitors = {s: Monitor("127.0.0.1", servers[s].port) for s in conns}
    for monitor in monitors.values():
        monitor.start()
    list(enqueue_many(typical_trigger(run.campaign, i) for i in range(triggers)))
    producer_trips = {side: m.stop() for side, m in monitors.items()}
    producer_calls = {side: _commandstats(c) for side, c in conns.items()}
    memory_queued = {side: _key_bytes(c) for side, c in conns.items()}

    for conn in conns.values():
        conn.config_resetstat()
    monitors = {s: Monitor("127.0.0.1", servers[s].port) for s in conns}
    for monitor in monitors.values():
        monitor.start()
    worker = stack.start_worker(run, pool=None, concurrency=None)
    try:
        wait_until(lambda: stack.seen(run.campaign) >= triggers, 300, "the drain", every_s=0.2)
        # the last commits and acknowledgements land after Clix saw the request
        wait_until(
            lambda: (
                conns["broker"].llen(run.queue) == 0 and conns["broker"].zcard("unacked_index") == 0
            ),
            60,
            "the last acknowledgements",
            every_s=0.2,
        )
        time.sleep(0.5)
        worker_trips = {side: m.stop() for side, m in monitors.items()}
        worker_calls = {side: _commandstats(c) for side, c in conns.items()}
    finally:
        worker.stop()
        for monitor in monitors.values():
            if monitor.is_alive():
                monitor.stop()
    memory_done = {side: _key_bytes(c) for side, c in conns.items()}
    results_done = _key_bytes(conns["store"], results=True)
    for conn in conns.values():
        conn.close()
    return {
        "triggers": triggers,
        "producer": {
            side: {
                "commands": _per_trigger(producer_calls[side], triggers),
                "round_trips": _trips(producer_trips[side], triggers),
            }
            for side in conns
        },
        "worker": {
            side: {
                "commands": _per_trigger(worker_calls[side], triggers),
                "round_trips": _trips(worker_trips[side], triggers),
            }
            for side in conns
        },
        "bytes_per_queued_trigger": {
            side: round((memory_queued[side] - memory_before[side]) / triggers) for side in conns
        },
        "bytes_per_remembered_trigger": round(
            (memory_done["store"] - results_done - (memory_before["store"] - results_before))
            / triggers
        ),
        "bytes_per_result": round((results_done - results_before) / triggers),
        "worker_store_trips_per_trigger": _own_trips_per_trigger(worker_trips["store"], triggers),
    }
