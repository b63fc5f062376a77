"""MONITOR in a thread: what clients send a Redis server while a test runs.

MONITOR marks the commands a Lua script runs; they are left out, so a script
counts as the one round trip it is.
"""

from __future__ import annotations

import threading
from collections import Counter

import redis


class CommandLog:
    """Every command clients send (not those scripts run), counted by name, script and channel."""

    def __init__(self, url: str) -> None:
        self.conn = redis.Redis.from_url(url)
        #: commands by lower-case name
        self.commands: Counter[str] = Counter()
        #: EVALSHA calls by script sha
        self.scripts: Counter[str] = Counter()
        #: PUBLISH calls by channel
        self.publishes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommandLog:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.conn.ping()  # wakes the monitor up so it sees the stop
        self._thread.join(timeout=10)
        self.conn.close()

    def _run(self) -> None:
        with self.conn.monitor() as monitor:
            self._ready.set()
            while not self._stop.is_set():
                entry = monitor.next_command()
                if entry.get("client_type") == "lua" or entry.get("client_address") == "lua":
                    continue
                words = str(entry["command"]).split()
                name = words[0].lower()
                self.commands[name] += 1
                if name == "evalsha" and len(words) > 1:
                    self.scripts[words[1]] += 1
                elif name == "publish" and len(words) > 1:
                    self.publishes[words[1]] += 1
