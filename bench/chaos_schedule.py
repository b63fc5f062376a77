"""Scheduled triggers and cancels in a chaos run.

Besides the stream of immediate triggers, a run schedules a slice of triggers
(2% of the run, at least 20) on a campaign of their own, due 5-30 s ahead:
their due times fall among the worker kills, store cuts and restarts. Half are
cancelled at once. The checks: every kept one is delivered (none lost, the
schedule survives the store's restart with AOF), none is sent before its time,
and no cancelled one is ever sent. Their extra accepted sends count with the
run's ``duplicate_sends`` (the fleet's ambiguous counter covers them too).
How late they went out is reported, not checked: a restarting store delays them.
"""

from __future__ import annotations

import collections
import random
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.chaos_fleet import PROJECT_ID
from bench.chaos_load import key_of
from config.keys import KeySpace, Scope
from tasks.cancel import Canceller
from tasks.idempotency import IdempotencyStore
from tasks.schedule import ScheduleStore

__all__ = ["Scheduled", "judge_scheduled", "schedule_and_cancel", "wait_for_scheduled"]

#: Due times are this far ahead of scheduling, in seconds.
DUE_S = (5.0, 30.0)


@dataclass
class Scheduled:
    """What was scheduled and cancelled."""

    campaign: str
    due_s: dict[str, float] = field(default_factory=dict)  # key -> due time (epoch s)
    cancelled: set[str] = field(default_factory=set)
    cancel_refused: dict[str, str] = field(default_factory=dict)  # key -> outcome

    @property
    def kept(self) -> list[str]:
        """Keys that must be delivered."""
        return sorted(set(self.due_s) - self.cancelled)


def schedule_and_cancel(
    store_url: str, prefix: str, run_id: str, triggers: int, rng: random.Random
) -> Scheduled:
    """Schedule 2% of ``triggers`` (at least 20), then cancel every other one."""
    conn = redis.Redis.from_url(store_url)
    keys = KeySpace(prefix)
    schedule = ScheduleStore(conn, keys, ttl_s=3_600)
    canceller = Canceller(conn, keys, ttl_s=3_600)
    load = Scheduled(campaign=f"chaos-scheduled-{run_id}")
    try:
        for i in range(max(20, triggers // 50)):
            key = f"s{i}"
            kwargs = {"campaign_id": load.campaign, "idempotency_key": key}
            kwargs["properties"] = {"key": key, "n": i}
            answer = schedule.schedule(kwargs, delay_ms=int(rng.uniform(*DUE_S) * 1000))
            assert answer.send_at_ms is not None
            load.due_s[key] = answer.send_at_ms / 1000
        for key in sorted(load.due_s)[::2]:
            outcome = canceller.cancel(load.campaign, key, [PROJECT_ID])
            if outcome.cancelled:
                load.cancelled.add(key)
            else:
                load.cancel_refused[key] = outcome.outcome
    finally:
        conn.close()
    return load


def wait_for_scheduled(store_url: str, prefix: str, load: Scheduled, timeout_s: float) -> int:
    """Wait until every kept scheduled key is done or dead (at most ``timeout_s``); open keys."""
    conn = redis.Redis.from_url(store_url)
    store = IdempotencyStore(conn, KeySpace(prefix), lease_ms=1000, ttl_s=3600)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            open_keys = [
                key
                for key in load.kept
                if store.status(Scope(PROJECT_ID, load.campaign, key)).state != "done"
                and not store.status(Scope(PROJECT_ID, load.campaign, key)).dead_entry_id
            ]
            if not open_keys or time.monotonic() > deadline:
                return len(open_keys)
            time.sleep(1)
    finally:
        conn.close()


def judge_scheduled(
    load: Scheduled, requests: list[dict[str, Any]], still_open: int
) -> tuple[dict[str, bool], dict[str, Any], int]:
    """``(checks, details, duplicate sends)`` of the scheduled slice."""
    accepted: dict[str, list[float]] = collections.defaultdict(list)
    for record in requests:
        key = key_of(record)
        if record["status"] == 200 and key is not None:
            accepted[key].append(record["at"])
    early = sorted(k for k, at in accepted.items() if min(at) < load.due_s[k])
    cancelled_sent = sorted(load.cancelled & set(accepted))
    lost = sorted(k for k in load.kept if k not in accepted)
    late_s = sorted(min(accepted[k]) - load.due_s[k] for k in load.kept if k in accepted)
    checks = {
        "scheduled_none_lost": not lost and still_open == 0,
        "scheduled_none_early": not early,
        "cancelled_never_sent": not cancelled_sent,
    }
    details = {
        "scheduled": len(load.due_s),
        "scheduled_cancelled": len(load.cancelled),
        "scheduled_cancel_refused": load.cancel_refused,
        "scheduled_lost": lost[:50],
        "scheduled_early": early[:50],
        "scheduled_cancelled_sent": cancelled_sent[:50],
        "scheduled_late_p50_s": round(late_s[len(late_s) // 2], 3) if late_s else None,
        "scheduled_late_max_s": round(late_s[-1], 3) if late_s else None,
        "scheduled_within_1s": sum(1 for late in late_s if late <= 1.0),
    }
    duplicates = sum(len(at) - 1 for at in accepted.values())
    return checks, details, duplicates
