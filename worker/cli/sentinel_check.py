"""What ``clix-worker check`` finds behind a Sentinel URL: the primary, or why there is none.

Each Sentinel-managed Redis (the store, and the broker when it is another one)
gets one finding: the primary's address with the master name, how many
sentinels know it and how many replicas are up; or a failure when no sentinel
answers, none knows the master name (a typo in the URL would otherwise look
like an outage at the first failover), or the primary is down.
"""

from __future__ import annotations

from typing import Any

import redis

from config.connections import sentinel_manager
from config.sentinel import SentinelTarget
from config.settings import Settings
from worker.readiness import Finding

__all__ = ["sentinel_findings"]


def sentinel_findings(settings: Settings) -> list[Finding]:
    """One finding per Sentinel-managed Redis; none without Sentinel."""
    targets: dict[str, SentinelTarget] = {}
    if settings.store_sentinel is not None:
        targets["redis primary"] = settings.store_sentinel
    broker = settings.broker_sentinel
    if broker is not None and broker != settings.store_sentinel:
        targets["broker primary"] = broker
    return [_finding(name, target, settings) for name, target in targets.items()]


def _finding(name: str, target: SentinelTarget, settings: Settings) -> Finding:
    manager = sentinel_manager(target, settings)
    answered = 0
    states: list[dict[str, Any]] = []
    replicas = 0
    try:
        for sentinel in manager.sentinels:
            try:
                state = sentinel.sentinel_master(target.master_name)
            except redis.ResponseError:  # answers, but monitors no master of that name
                answered += 1
                continue
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            answered += 1
            if isinstance(state, dict):
                states.append(state)
            if len(states) == 1:
                replicas = sum(
                    1
                    for r in sentinel.sentinel_slaves(target.master_name)
                    if not (r.get("is_sdown") or r.get("is_odown"))
                )
    except redis.RedisError as exc:
        asking = f"{type(exc).__name__} asking the sentinels of {target.describe()}"
        return Finding(name, False, asking)
    finally:
        manager.close()
    total = len(target.sentinels)
    if not answered:
        return Finding(name, False, f"none of the {total} sentinels answers ({target.describe()})")
    if not states:
        return Finding(
            name,
            False,
            f"no sentinel knows master {target.master_name!r}: check the master name "
            f"in the URL ({answered} of {total} sentinels answered)",
        )
    primary = states[0]
    if not primary.get("is_master") or primary.get("is_sdown") or primary.get("is_odown"):
        return Finding(
            name, False, f"the primary of {target.master_name!r} is down (failover under way?)"
        )
    return Finding(
        name,
        True,
        f"{primary['ip']}:{primary['port']} (master {target.master_name!r}, "
        f"{len(states)}/{total} sentinels know it, {replicas} replica(s) up)",
    )
