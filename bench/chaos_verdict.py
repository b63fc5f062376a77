"""What a chaos run proves: counts from the sandbox, the ledger and the DLQ, and the checks.

* ``delivered``: unique valid keys with a done record in the ledger;
* ``lost``: unique valid keys neither done nor dead-lettered after the drain;
* ``duplicate_sends``: requests Clix *accepted* (200) beyond one per key (retries
  of 5xx, 429 or dropped requests are not sends: Clix created nothing);
* ``ambiguous_counted``: the fleet's ``ambiguous_duplicates`` counter;
* ``dlq`` / ``expected_dlq``: DLQ entries / poison triggers sent;
* ``store_fault_duplicates``: extra sends of keys whose first accepted request
  met a store cut or restart (between its arrival and a moment after its
  answer, when the worker would have recorded it) but no worker kill and no
  held Clix answer of that key: nothing but the store explains them.

The attribution is by time window, so a duplicate of one worker can be put down
to another worker's kill in the same second: it errs towards excusing.
"""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from bench.chaos_faults import FaultEvent
from bench.chaos_fleet import PROJECT_ID
from bench.chaos_load import Load, key_of
from config.keys import KeySpace, Scope, as_text
from tasks.dlq import DeadLetterQueue
from tasks.idempotency import IdempotencyStore

__all__ = [
    "LINE_FIELDS",
    "Verdict",
    "ambiguous_counter",
    "dlq_entries",
    "judge",
    "ledger_states",
    "wait_for_drain",
]

LINE_FIELDS = (
    "sent",
    "delivered",
    "lost",
    "duplicate_sends",
    "ambiguous_counted",
    "dlq",
    "expected_dlq",
    "store_fault_duplicates",
)
_STORE_FAULTS = ("store_cut", "store_cut_after_accept", "store_restart")
_SETTLED = ("done", "dead")
_WINDOW_SLACK_S = 0.5  # sandbox and driver clocks are one clock, but events take a moment
_COMMIT_SLACK_S = 2.0  # from Clix's answer to the done record, generously on a busy machine


@dataclass
class Verdict:
    """The numbers of the line, the checks and the evidence behind them."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicate_sends: int = 0
    ambiguous_counted: int = 0
    dlq: int = 0
    expected_dlq: int = 0
    store_fault_duplicates: int = 0
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every promise kept."""
        return all(self.checks.values())

    def line(self) -> str:
        """``sent=... delivered=... ...`` (the issue's fields first, then ours)."""
        return " ".join(f"{name}={getattr(self, name)}" for name in LINE_FIELDS)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``ok``."""
        return {**asdict(self), "ok": self.ok}


def ledger_states(conn: redis.Redis, prefix: str, campaign: str, keys: list[str]) -> dict[str, str]:
    """Each key's state: ``done``, ``dead``, ``in_flight``, ``queued`` or ``unknown``."""
    store = IdempotencyStore(conn, KeySpace(prefix), lease_ms=1000, ttl_s=3600)
    states = {}
    for key in keys:
        status = store.status(Scope(PROJECT_ID, campaign, key))
        states[key] = "dead" if status.dead_entry_id else status.state
    return states


def wait_for_drain(
    conn: redis.Redis, prefix: str, load: Load, *, timeout_s: float, stall_s: float
) -> dict[str, str]:
    """Wait until every valid key and every rejected poison key is done or dead.

    Gives up after ``timeout_s``, or when nothing moved for ``stall_s``; returns the
    states of the unique valid keys.
    """
    deadline = time.monotonic() + timeout_s
    last_open, moved_at = -1, time.monotonic()
    while True:
        states = ledger_states(conn, prefix, load.campaign, load.unique_keys)
        poison = ledger_states(conn, prefix, load.poison_campaign, load.rejected_keys)
        still_open = sum(1 for s in [*states.values(), *poison.values()] if s not in _SETTLED)
        if still_open != last_open:
            last_open, moved_at = still_open, time.monotonic()
        now = time.monotonic()
        if not still_open or now > deadline or now - moved_at > stall_s:
            return states
        time.sleep(2)


def _within(moment: float, window: tuple[float, float]) -> bool:
    return window[0] <= moment <= window[1]


def judge(
    load: Load,
    states: dict[str, str],
    requests: list[dict[str, Any]],
    dlq_entries: list[dict[str, Any]],
    ambiguous: int,
    events: list[FaultEvent],
) -> Verdict:
    """Count, attribute duplicates, and run the four checks."""
    verdict = Verdict(sent=load.sent, expected_dlq=load.expected_dlq, ambiguous_counted=ambiguous)
    verdict.delivered = sum(1 for s in states.values() if s == "done")
    # a key no producer managed to enqueue (given up after its budget) is not owed
    not_owed = set(load.gave_up)
    lost = sorted(k for k, s in states.items() if s not in ("done", "dead") and k not in not_owed)
    verdict.lost = len(lost)
    accepted: dict[str, list[float]] = collections.defaultdict(list)
    for record in requests:
        key = key_of(record)
        if record["status"] == 200 and key is not None:
            accepted[key].append(record["at"])
    duplicates = {k: sorted(ts) for k, ts in accepted.items() if len(ts) > 1}
    verdict.duplicate_sends = sum(len(ts) - 1 for ts in duplicates.values())
    causes = {k: _causes(k, ts, events) for k, ts in duplicates.items()}
    excused = {"worker_kill", "held_answer"}  # the ambiguous duplicates the design allows
    store_only = {k: c for k, c in causes.items() if "store" in c and not excused & set(c)}
    verdict.store_fault_duplicates = sum(len(duplicates[k]) - 1 for k in store_only)

    dlq_check, dlq_details = _check_dlq(load, dlq_entries)
    verdict.dlq = len(dlq_entries)
    verdict.checks = {
        "lost_is_zero": verdict.lost == 0,
        "duplicates_within_ambiguous_counted": verdict.duplicate_sends <= ambiguous,
        "no_duplicates_from_store_faults_alone": verdict.store_fault_duplicates == 0,
        "dlq_holds_exactly_the_poison": dlq_check,
    }
    verdict.details = {
        "lost_keys": {k: states[k] for k in lost[:50]},
        "lost_by_state": dict(collections.Counter(states[k] for k in lost)),
        "valid_keys_dead_lettered": sum(1 for s in states.values() if s == "dead"),
        "enqueue": {
            # faults that began while the producers were still enqueueing
            "faults_while_enqueueing": sorted(
                e.kind for e in events if _within(e.start, load.enqueue_window)
            ),
            "retried": load.retried_enqueues,
            "gave_up": load.gave_up,
            "errors": load.enqueue_errors,
        },
        "duplicates": {k: {"accepted_at": duplicates[k], "causes": causes[k]} for k in duplicates},
        "duplicates_by_cause": dict(
            collections.Counter("+".join(c) or "none" for c in causes.values())
        ),
        "requests_by_status": dict(collections.Counter(str(r["status"]) for r in requests)),
        **dlq_details,
    }
    return verdict


def _causes(key: str, accepted_at: list[float], events: list[FaultEvent]) -> list[str]:
    """The faults that can explain why a key's first accepted send was not recorded.

    They must strike between that request's arrival and a moment after its answer
    (held answers come late) by which the worker would have committed it. A
    store fault in that window holds the commit back (it is retried while the
    store is away), so the window runs on to the fault's end: a worker killed
    while it waits to commit explains the duplicate too.
    """
    delay = max(
        (float(e.detail.get("answer_delay_s", 0)) for e in events if e.detail.get("key") == key),
        default=0.0,
    )
    start = accepted_at[0] - _WINDOW_SLACK_S
    end = accepted_at[0] + delay + _COMMIT_SLACK_S
    stretched = True
    while stretched:  # a stretched window may reach another store fault
        stretched = False
        for event in events:
            overlaps = not (event.detail.get("missed") or event.end < start or event.start > end)
            if overlaps and event.kind in _STORE_FAULTS and event.end + _COMMIT_SLACK_S > end:
                end, stretched = event.end + _COMMIT_SLACK_S, True
    found = set()
    for event in events:
        if event.detail.get("missed") or event.end < start or event.start > end:
            continue
        if event.kind == "worker_kill":
            found.add("worker_kill")
        elif event.kind == "answer_held" and event.detail.get("key") == key:
            found.add("held_answer")
        elif event.kind in _STORE_FAULTS:
            found.add("store")
        elif event.kind == "broker_restart":
            found.add("broker_restart")
    return sorted(found)


def _check_dlq(load: Load, entries: list[dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
    rejected = collections.Counter(
        e.get("idempotency_key") for e in entries if e.get("campaign_id") == load.poison_campaign
    )
    raw = sum(1 for e in entries if load.marker in str(e.get("raw") or ""))
    other = [
        {k: e.get(k) for k in ("campaign_id", "idempotency_key", "reason", "status_code", "error")}
        for e in entries
        if e.get("campaign_id") != load.poison_campaign and load.marker not in str(e.get("raw"))
    ]
    exact = (
        rejected == collections.Counter(load.rejected_keys) and raw == load.raw_count and not other
    )
    details = {
        "dlq_by_reason": dict(collections.Counter(str(e.get("reason")) for e in entries)),
        "dlq_poison_rejected": sum(rejected.values()),
        "dlq_poison_raw": raw,
        "dlq_unexpected": other[:50],
        "dlq_unexpected_count": len(other),
    }
    return exact, details


def ambiguous_counter(conn: redis.Redis, prefix: str) -> int:
    """The fleet's ``ambiguous_duplicates`` counter."""
    return int(as_text(conn.hget(KeySpace(prefix).stats, "ambiguous_duplicates") or 0))


def dlq_entries(conn: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every DLQ entry of the run."""
    return DeadLetterQueue(conn, KeySpace(prefix), ttl_s=3600).entries()
