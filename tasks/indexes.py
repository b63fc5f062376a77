"""The bucketed indexes read as one: the pending index, the schedule and the DLQ index.

Each bucket of the key layout (:mod:`config.keys`) has its own sorted sets, in
its own Redis Cluster slot; readers sum their sizes and read their ranges with
scores, to merge them oldest first. On one bucket (a plain Redis) each is the
single command it always was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from config.keys import as_text

__all__ = ["scored_range", "total_members"]


def scored_range(
    client: redis.Redis,
    sorted_set: str,
    low: float | str,
    high: float | str,
    *,
    start: int = 0,
    num: int | None = None,
) -> list[tuple[float, str]]:
    """``ZRANGEBYSCORE ... WITHSCORES [LIMIT start num]`` as (score, member) pairs, lowest first."""
    if num is None:
        reply: Any = client.zrangebyscore(sorted_set, low, high, withscores=True)
    else:
        reply = client.zrangebyscore(sorted_set, low, high, start=start, num=num, withscores=True)
    return [(float(score), as_text(member)) for member, score in reply]


def total_members(client: redis.Redis, sorted_sets: Sequence[str]) -> int:
    """How many members the sorted sets hold together (one pipelined round trip per node)."""
    pipe = client.pipeline(transaction=False)
    for name in sorted_sets:
        pipe.zcard(name)
    return sum(int(n) for n in pipe.execute())
