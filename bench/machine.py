"""What the benchmarks ran on: CPU, memory, versions, load; which pools can be measured."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from typing import Any

__all__ = ["machine", "pools_available"]


def machine() -> dict[str, Any]:
    """What the numbers were taken on."""
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_kb = int(meminfo.readline().split()[1])
    versions = {}
    for name in ("celery", "kombu", "redis", "httpx", "gevent"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis_server": server.stdout.split()[2] if server.returncode == 0 else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        **versions,
    }


def pools_available() -> list[str]:
    """prefork and threads always; gevent when it is installed (the ``bench`` extra)."""
    found = ["prefork", "threads"]
    if importlib.util.find_spec("gevent") is not None:
        found.append("gevent")
    return found
