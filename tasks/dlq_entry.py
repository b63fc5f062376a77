"""A DLQ entry: its fields, its identity, the ledger scope it belongs to.

:func:`build_entry` makes the entry of DESIGN.md section 4 (``id``,
``campaign_id``, ``idempotency_key``, ``reason``, ``status_code``, ``error``,
``attempts``, ``first_seen``, ``failed_at``, ``trigger``, plus ``project_id``
and ``task_id``; ``raw`` for a message that never decoded). The id starts with
the failure time in ms, which is also its score in the DLQ index.
:func:`fingerprint` is what makes two entries without a scope the same message;
:func:`scope_of` is the ledger scope an entry marked dead.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from config.keys import Scope

__all__ = ["RAW_MAX_BYTES", "REASONS", "build_entry", "fingerprint", "iso_time", "scope_of"]

REASONS = ("invalid_payload", "rejected", "retries_exhausted", "redelivery_limit")

#: Default cap of a stored ``raw`` body: enough to see what a bad message is,
#: not a 10 MB payload per entry in the store's memory.
RAW_MAX_BYTES = 64 * 1024


def iso_time(epoch_s: float) -> str:
    """UTC ISO-8601 with milliseconds, as DLQ entries show times."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def build_entry(
    *,
    now: float,
    raw_max_bytes: int,
    reason: str,
    error: str,
    trigger: dict[str, Any] | None,
    status_code: int | None = None,
    attempts: int = 0,
    first_seen: float | None = None,
    project_id: str | None = None,
    task_id: str | None = None,
    raw: str | None = None,
) -> dict[str, Any]:
    """An entry failing at ``now`` (epoch s); ``raw`` cut at ``raw_max_bytes`` of UTF-8.

    A cut body is marked ``raw_truncated`` with its full size in ``raw_bytes``.
    """
    if reason not in REASONS:
        raise ValueError(f"unknown DLQ reason {reason!r}")
    kwargs = trigger if isinstance(trigger, dict) else {}
    entry: dict[str, Any] = {
        "id": f"{int(now * 1000):013d}-{uuid.uuid4().hex[:8]}",
        "campaign_id": _str_or_none(kwargs.get("campaign_id")),
        "idempotency_key": _str_or_none(kwargs.get("idempotency_key")),
        "reason": reason,
        "status_code": status_code,
        "error": error,
        "attempts": attempts,
        "first_seen": iso_time(first_seen if first_seen is not None else now),
        "failed_at": iso_time(now),
        "trigger": trigger,
        "project_id": project_id,
        "task_id": task_id,
    }
    if raw is not None:
        data = raw.encode("utf-8", "surrogatepass")
        if len(data) > raw_max_bytes:
            entry["raw"] = data[:raw_max_bytes].decode("utf-8", "ignore")
            entry["raw_truncated"] = True
            entry["raw_bytes"] = len(data)
        else:
            entry["raw"] = raw
    return entry


def fingerprint(entry: dict[str, Any]) -> str:
    """What makes an entry without a scope the same message: reason, task id, trigger, raw."""
    identity = [entry.get(k) for k in ("reason", "task_id", "trigger", "raw", "project_id")]
    encoded = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


def scope_of(entry: dict[str, Any]) -> Scope | None:
    """The ledger scope an entry marked dead, if it had one."""
    project, campaign, key = (
        entry.get("project_id"),
        entry.get("campaign_id"),
        entry.get("idempotency_key"),
    )
    if isinstance(project, str) and isinstance(campaign, str) and isinstance(key, str):
        return Scope(project, campaign, key)
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
