"""The Redis key layout: every key the system writes, in one place.

All keys start with ``CLIX_KEY_PREFIX`` (default ``clix``). Keys about one
trigger are scoped by project, campaign and idempotency key; each part is
percent-encoded, so ``:`` inside an id cannot make two scopes collide and no
glob character reaches a ``SCAN MATCH`` pattern.

====================================  =======  ==========================================
key                                   type     meaning, lifetime
====================================  =======  ==========================================
``{p}:lease:{scope}``                 string   in flight: owner ``task_id|nonce``; PX lease
``{p}:done:{scope}``                  string   done: the bare ``trigger_id``; TTL (all that is
                                               remembered of a delivered trigger)
``{p}:dead:{scope}``                  string   dead-lettered: the DLQ entry id; TTL
``{p}:meta:{scope}``                  hash     deliveries, attempts, first_seen, sending; TTL;
                                               deleted when the trigger is done
``{p}:dlq:entries``                   hash     DLQ entry id -> entry JSON; durable
``{p}:dlq:index``                     zset     DLQ entry ids by failure time (ms)
``{p}:dlq:unscoped``                  hash     fingerprint of an entry without scope -> its id
``{p}:dlq:replaying``                 hash     entry id -> what its replay cleared, until it is gone
``{p}:stats``                         hash     fleet-wide counters (ambiguous duplicates...)
``{p}:pending:{campaign}:{key}``      string   accepted, not yet done/dead: kwargs; TTL
``{p}:pending-index``                 zset     pending record keys by enqueue time (ms)
``{p}:reconciler``                    string   lease of the worker sweeping pending records
``{p}:scheduled:{campaign}:{key}``    hash     scheduled, not yet due: kwargs, send_at_ms,
                                               task_id (the message's id when it is due); TTL
``{p}:schedule``                      zset     scheduled record keys by due time (ms); a
                                               mover that takes one pushes it ahead (retake)
``{p}:cancelled:{campaign}:{key}``    string   cancelled before it was sent: time (ms); TTL
``{p}:projects``                      set      project ids the fleet's workers send for
``{p}:workers``                       hash     worker short id -> host:pid (attempt history;
                                               the last 10,000 kept)
``{p}:worker-seq``                    string   the last worker short id handed out
``{p}:ratelimit:{project}``           string   GCRA theoretical arrival time (us); PX
``{p}:breaker:{project}``             hash     circuit breaker state, reason, probe_at
``{p}:breaker:{project}:window``      hash     the fleet's request outcomes per second
                                               (``{sec}:ok``/``{sec}:fail``); expires
====================================  =======  ==========================================

TTLs come from :mod:`config.settings` (``CLIX_IDEMPOTENCY_TTL_S``,
``CLIX_LEASE_S``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["KeySpace", "Scope", "as_text"]


def as_text(value: object) -> str:
    """A Redis reply as text (clients here run without ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _part(value: str) -> str:
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class Scope:
    """Who a trigger belongs to: the unit of idempotency."""

    project_id: str
    campaign_id: str
    idempotency_key: str

    def encoded(self) -> str:
        """The scope as one unambiguous, glob-free key segment."""
        return ":".join(_part(p) for p in (self.project_id, self.campaign_id, self.idempotency_key))


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds the Redis keys of one deployment (one key prefix)."""

    prefix: str = "clix"

    def lease(self, scope: Scope) -> str:
        """In-flight claim of a scope."""
        return f"{self.prefix}:lease:{scope.encoded()}"

    def done(self, scope: Scope) -> str:
        """Committed outcome of a scope."""
        return f"{self.prefix}:done:{scope.encoded()}"

    def dead(self, scope: Scope) -> str:
        """Marker of a scope whose trigger sits in the DLQ."""
        return f"{self.prefix}:dead:{scope.encoded()}"

    def meta(self, scope: Scope) -> str:
        """Counters of a scope across deliveries."""
        return f"{self.prefix}:meta:{scope.encoded()}"

    def scope_keys(self, scope: Scope) -> list[str]:
        """``[lease, done, dead, meta, pending, pending index]``: KEYS of the ledger scripts."""
        return [
            self.lease(scope),
            self.done(scope),
            self.dead(scope),
            self.meta(scope),
            self.pending(scope.campaign_id, scope.idempotency_key),
            self.pending_index,
        ]

    def hold_keys(self, scope: Scope) -> list[str]:
        """``[scheduled record, cancelled marker]``: what the claim checks besides the ledger."""
        return [
            self.scheduled(scope.campaign_id, scope.idempotency_key),
            self.cancelled(scope.campaign_id, scope.idempotency_key),
        ]

    def pending(self, campaign_id: str, idempotency_key: str) -> str:
        """Pending record of a trigger (scoped by campaign and key: producers know no project)."""
        return f"{self.prefix}:pending:{_part(campaign_id)}:{_part(idempotency_key)}"

    @property
    def pending_index(self) -> str:
        """Sorted set of pending record keys, scored by enqueue time (ms)."""
        return f"{self.prefix}:pending-index"

    def scheduled(self, campaign_id: str, idempotency_key: str) -> str:
        """Scheduled record of a trigger not yet due (campaign and key, like pending)."""
        return f"{self.prefix}:scheduled:{_part(campaign_id)}:{_part(idempotency_key)}"

    @property
    def schedule(self) -> str:
        """Sorted set of scheduled record keys, scored by due time (ms)."""
        return f"{self.prefix}:schedule"

    def cancelled(self, campaign_id: str, idempotency_key: str) -> str:
        """Marker of a trigger cancelled before it was sent (campaign and key)."""
        return f"{self.prefix}:cancelled:{_part(campaign_id)}:{_part(idempotency_key)}"

    @property
    def projects(self) -> str:
        """Set of the project ids the fleet's workers send for (registered at start-up)."""
        return f"{self.prefix}:projects"

    @property
    def workers(self) -> str:
        """Hash of worker process names by short id (attempt histories store the id)."""
        return f"{self.prefix}:workers"

    @property
    def worker_seq(self) -> str:
        """Counter handing out worker short ids."""
        return f"{self.prefix}:worker-seq"

    @property
    def reconciler_lease(self) -> str:
        """Held by the one worker sweeping pending records right now."""
        return f"{self.prefix}:reconciler"

    def scope_pattern(self, state: str, campaign_id: str, idempotency_key: str) -> str:
        """``SCAN MATCH`` pattern of a state key for a campaign and key in any project."""
        return f"{self.prefix}:{state}:*:{_part(campaign_id)}:{_part(idempotency_key)}"

    @property
    def dlq_entries(self) -> str:
        """Hash of DLQ entries by id."""
        return f"{self.prefix}:dlq:entries"

    @property
    def dlq_index(self) -> str:
        """Sorted set of DLQ entry ids, scored by failure time in ms."""
        return f"{self.prefix}:dlq:index"

    @property
    def dlq_unscoped(self) -> str:
        """Hash of entry ids by fingerprint, for entries no ledger scope makes unique."""
        return f"{self.prefix}:dlq:unscoped"

    @property
    def dlq_replaying(self) -> str:
        """Hash of entries being replayed: the delivery count and mark TTL their replay cleared."""
        return f"{self.prefix}:dlq:replaying"

    def ratelimit(self, project_id: str) -> str:
        """The fleet-wide rate limiter of a project."""
        return f"{self.prefix}:ratelimit:{_part(project_id)}"

    def breaker(self, project_id: str) -> str:
        """The fleet-wide circuit breaker of a project."""
        return f"{self.prefix}:breaker:{_part(project_id)}"

    def breaker_window(self, project_id: str) -> str:
        """The fleet's recent request outcomes, which the breaker judges."""
        return f"{self.breaker(project_id)}:window"

    @property
    def stats(self) -> str:
        """Hash of fleet-wide counters."""
        return f"{self.prefix}:stats"
