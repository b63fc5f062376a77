"""Choosing and counting DLQ entries: the filters of ``dlq list | replay | purge | stats``.

A :class:`Selection` names entries by failure time (``since_ms`` / ``until_ms``,
both inclusive, read straight off the DLQ index, a sorted set scored by failure
time), by reason and by campaign (read from the entries themselves: the index
narrows the time window first, then the entries of that window are read a page
at a time). An empty selection selects everything.

:class:`DlqStats` counts a selection by reason and by campaign.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DlqStats", "Selection", "count_entries"]


@dataclass(frozen=True, slots=True)
class Selection:
    """Which entries an operation touches; empty fields do not filter."""

    reasons: frozenset[str] = frozenset()
    campaign_ids: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def reads_entries(self) -> bool:
        """Whether matching needs the entries, not only the index (reason or campaign)."""
        return bool(self.reasons or self.campaign_ids)

    @property
    def is_empty(self) -> bool:
        """Whether this selects every entry."""
        return not self.reads_entries and self.since_ms is None and self.until_ms is None

    def score_bounds(self) -> tuple[int | str, int | str]:
        """``min`` and ``max`` of the ``ZRANGEBYSCORE`` over the index (ms, inclusive)."""
        return (
            "-inf" if self.since_ms is None else self.since_ms,
            "+inf" if self.until_ms is None else self.until_ms,
        )

    def matches(self, entry: dict[str, Any]) -> bool:
        """Whether ``entry`` passes the reason and campaign filters (time is the index's)."""
        if self.reasons and entry.get("reason") not in self.reasons:
            return False
        return not self.campaign_ids or entry.get("campaign_id") in self.campaign_ids


@dataclass(slots=True)
class DlqStats:
    """Entries counted by reason and by campaign (``None``: the campaign is unknown)."""

    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_campaign: Counter[str | None] = field(default_factory=Counter)
    oldest_failed_at: str | None = None
    newest_failed_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``dlq stats --json`` document; campaigns by count, most first."""
        return {
            "total": self.total,
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_campaign": [
                {"campaign_id": campaign, "count": n}
                for campaign, n in sorted(
                    self.by_campaign.items(), key=lambda item: (-item[1], item[0] or "")
                )
            ],
            "oldest_failed_at": self.oldest_failed_at,
            "newest_failed_at": self.newest_failed_at,
        }


def count_entries(entries: Iterable[dict[str, Any]]) -> DlqStats:
    """Count ``entries`` (oldest first, as the DLQ yields them)."""
    stats = DlqStats()
    for entry in entries:
        stats.total += 1
        stats.by_reason[str(entry.get("reason"))] += 1
        campaign = entry.get("campaign_id")
        stats.by_campaign[campaign if isinstance(campaign, str) else None] += 1
        failed_at = entry.get("failed_at")
        if isinstance(failed_at, str):
            stats.oldest_failed_at = stats.oldest_failed_at or failed_at
            stats.newest_failed_at = failed_at
    return stats
