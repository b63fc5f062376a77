"""The Redis key layout: every key the system writes, in one place, with its slot.

All keys start with ``CLIX_KEY_PREFIX`` (default ``clix``). Keys about one
trigger are scoped by project, campaign and idempotency key; each part is
percent-encoded, so ``:`` inside an id cannot make two scopes collide and no
glob character (nor a ``{`` or ``}``) reaches a ``SCAN MATCH`` pattern or a
hash tag.

Buckets and slots
-----------------
Every multi-key script must find its keys in one Redis Cluster slot. A
trigger's keys and the indexes its scripts touch (pending index, schedule,
DLQ) therefore live together in the trigger's *bucket*: ``CLIX_KEY_SLOTS``
buckets (``N``), each with its own indexes, and a trigger belongs to bucket
``key_slot("<campaign>:<key>") * N // 16384`` (both parts percent-encoded;
``key_slot`` is Redis Cluster's CRC16 of the text). Producers know no project,
so the bucket does not depend on it. Readers (reconciler, schedule mover, DLQ
listing, metrics) go over every bucket.

With ``N = 1`` (the default on a plain Redis) there is one bucket and no hash
tag: the key names are exactly those of earlier releases. With ``N > 1`` (the
default is 16 on a Redis Cluster, ``redis+cluster://``) every key carries a
hash tag, ``{p}:{<tag>}:...``: bucket ``b``'s tag is ``b.j`` with the first
``j`` (0, 1, ...) whose slot lies in ``[b * 16384 // N, (b + 1) * 16384 // N)``, so the buckets are
spread evenly over the slot range and, with the slots split evenly between the
primaries, over the cluster's nodes. The fleet-wide keys have tags of their
own: ``{project=<p>}`` for a project's limiter and breaker, ``{fleet}`` for the
rest. ``N`` is part of the data's layout: every producer and worker of a store
must use the same value, and changing it (or moving to a cluster) starts from
an empty store (see the README, "Production Redis").

====================================  =======  ========  ===============================
key (``{p}`` is ``prefix`` + tag)     type     slot      meaning, lifetime
====================================  =======  ========  ===============================
``{p}:lease:{scope}``                 string   bucket    in flight: owner ``task_id|nonce``;
                                                         PX lease
``{p}:done:{scope}``                  string   bucket    done: the bare ``trigger_id``; TTL
``{p}:dead:{scope}``                  string   bucket    dead-lettered: the DLQ entry id; TTL
``{p}:meta:{scope}``                  hash     bucket    deliveries, attempts, first_seen,
                                                         sending; TTL; deleted when done
``{p}:pending:{campaign}:{key}``      string   bucket    accepted, not yet done/dead: kwargs;
                                                         TTL
``{p}:pending-index``                 zset     bucket    the bucket's pending record keys by
                                                         enqueue time (ms)
``{p}:scheduled:{campaign}:{key}``    hash     bucket    scheduled, not yet due: kwargs,
                                                         send_at_ms, task_id; TTL
``{p}:schedule``                      zset     bucket    the bucket's scheduled record keys by
                                                         due time (ms); a mover that takes one
                                                         pushes it ahead (retake)
``{p}:cancelled:{campaign}:{key}``    string   bucket    cancelled before it was sent: time
                                                         (ms); TTL
``{p}:dlq:entries``                   hash     bucket    DLQ entry id -> entry JSON; durable
``{p}:dlq:index``                     zset     bucket    DLQ entry ids by failure time (ms)
``{p}:dlq:unscoped``                  hash     bucket    fingerprint of an entry without scope
                                                         -> its id
``{p}:dlq:replaying``                 hash     bucket    entry id -> what its replay cleared
``{p}:ratelimit``                     string   project   GCRA theoretical arrival time (us); PX
``{p}:breaker``                       hash     project   circuit breaker state, reason, probe_at
``{p}:breaker:window``                hash     project   the fleet's request outcomes per
                                                         second (``{sec}:ok``/``{sec}:fail``)
``{p}:stats``                         hash     fleet     counters (ambiguous duplicates...)
``{p}:reconciler``                    string   fleet     lease of the worker sweeping pending
``{p}:projects``                      set      fleet     project ids the fleet sends for
``{p}:workers``                       hash     fleet     worker short id -> host:pid (attempt
                                                         history; the last 10,000 kept)
``{p}:worker-seq``                    string   fleet     the last worker short id handed out
====================================  =======  ========  ===============================

Untagged (``N = 1``) the project keys keep their earlier names
(``{prefix}:ratelimit:{project}``, ``{prefix}:breaker:{project}[:window]``).
A DLQ entry's id ends in ``-<bucket>`` when ``N > 1``, so it is found without
a search. Only the ledger's commit may touch a key outside its slot: Celery's
result key, written on a plain Redis store only (a cluster store keeps no
Celery results).

TTLs come from :mod:`config.settings` (``CLIX_IDEMPOTENCY_TTL_S``,
``CLIX_LEASE_S``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["MAX_KEY_SLOTS", "Bucket", "KeySpace", "Scope", "as_text"]

#: Most buckets a layout may have (readers go over all of them).
MAX_KEY_SLOTS = 256


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


@functools.lru_cache(maxsize=8)
def bucket_tags(count: int) -> tuple[str, ...]:
    """Hash tags of ``count`` buckets: bucket ``b``'s is ``b.j``, ``j`` the first in its range."""
    tags = []
    for bucket in range(count):
        j = 0
        while key_slot(f"{bucket}.{j}".encode()) * count // REDIS_CLUSTER_HASH_SLOTS != bucket:
            j += 1
        tags.append(f"{bucket}.{j}")
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class Bucket:
    """The per-bucket indexes: every script keeps a trigger's keys and these in one slot."""

    number: int
    base: str  # the prefix, with the bucket's hash tag when the layout is tagged

    @property
    def pending_index(self) -> str:
        """Sorted set of the bucket's pending record keys, scored by enqueue time (ms)."""
        return f"{self.base}:pending-index"

    @property
    def schedule(self) -> str:
        """Sorted set of the bucket's scheduled record keys, scored by due time (ms)."""
        return f"{self.base}:schedule"

    @property
    def dlq_entries(self) -> str:
        """Hash of the bucket's DLQ entries by id."""
        return f"{self.base}:dlq:entries"

    @property
    def dlq_index(self) -> str:
        """Sorted set of the bucket's DLQ entry ids, scored by failure time in ms."""
        return f"{self.base}:dlq:index"

    @property
    def dlq_unscoped(self) -> str:
        """Hash of entry ids by fingerprint, for entries no ledger scope makes unique."""
        return f"{self.base}:dlq:unscoped"

    @property
    def dlq_replaying(self) -> str:
        """Hash of entries being replayed: the delivery count and mark TTL their replay cleared."""
        return f"{self.base}:dlq:replaying"


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds the Redis keys of one deployment (one key prefix, ``slots`` buckets)."""

    prefix: str = "clix"
    #: ``CLIX_KEY_SLOTS``: the number of buckets; 1 keeps the untagged names
    slots: int = 1

    @classmethod
    def of(cls, settings: Settings) -> KeySpace:
        """The layout ``settings`` name (``CLIX_KEY_PREFIX``, ``CLIX_KEY_SLOTS``)."""
        return cls(settings.clix_key_prefix, settings.key_slots)

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= MAX_KEY_SLOTS:
            raise ValueError(f"CLIX_KEY_SLOTS must be between 1 and {MAX_KEY_SLOTS}")
        if self.tagged and ("{" in self.prefix or "}" in self.prefix):
            raise ValueError("CLIX_KEY_PREFIX must not contain '{' or '}' (hash tags)")

    @property
    def tagged(self) -> bool:
        """Whether keys carry hash tags (more than one bucket: the Redis Cluster layout)."""
        return self.slots > 1

    @property
    def claim_reserves_slot(self) -> bool:
        """Whether the ledger's claim may take a rate-limit slot in its own step.

        Only when the limiter's key can share the claim's slot: untagged. A
        tagged layout keeps the limiter in its project's slot, so a delivery
        reserves its first slot with a call of its own.
        """
        return not self.tagged

    def _tagged(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag}}}" if self.tagged else self.prefix

    # --- buckets -------------------------------------------------------------
    def bucket(self, number: int) -> Bucket:
        """Bucket ``number`` (0 <= number < slots)."""
        return Bucket(number, self._tagged(bucket_tags(self.slots)[number]))

    def buckets(self) -> Iterator[Bucket]:
        """Every bucket, in order: what readers of the indexes go over."""
        return (self.bucket(number) for number in range(self.slots))

    def bucket_for(self, campaign_id: str, idempotency_key: str) -> Bucket:
        """The bucket of a trigger (producers know no project: campaign and key only)."""
        if not self.tagged:
            return self.bucket(0)
        slot = key_slot(f"{_part(campaign_id)}:{_part(idempotency_key)}".encode())
        return self.bucket(slot * self.slots // REDIS_CLUSTER_HASH_SLOTS)

    def bucket_of_key(self, key: str) -> Bucket:
        """The bucket of a key this layout built (a pending or scheduled record read back)."""
        if not self.tagged:
            return self.bucket(0)
        tag = key.partition("{")[2].partition("}")[0]
        return self.bucket(int(tag.partition(".")[0]))

    def bucket_of_entry(self, entry_id: str) -> Bucket:
        """The bucket of a DLQ entry: its id ends in ``-<bucket>`` when the layout is tagged."""
        if not self.tagged:
            return self.bucket(0)
        parts = entry_id.split("-")
        number = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 0
        return self.bucket(number if number < self.slots else 0)

    def entry_id(self, base_id: str, bucket: Bucket) -> str:
        """A DLQ entry id that names its bucket (tagged layouts only)."""
        return f"{base_id}-{bucket.number}" if self.tagged else base_id

    # --- one trigger ---------------------------------------------------------
    def _scoped(self, state: str, scope: Scope) -> str:
        base = self.bucket_for(scope.campaign_id, scope.idempotency_key).base
        return _scope_key(base, state, scope.encoded())

    def lease(self, scope: Scope) -> str:
        """In-flight claim of a scope."""
        return self._scoped("lease", scope)

    def done(self, scope: Scope) -> str:
        """Committed outcome of a scope."""
        return self._scoped("done", scope)

    def dead(self, scope: Scope) -> str:
        """Marker of a scope whose trigger sits in the DLQ."""
        return self._scoped("dead", scope)

    def meta(self, scope: Scope) -> str:
        """Counters of a scope across deliveries."""
        return self._scoped("meta", scope)

    def scope_keys(self, scope: Scope) -> list[str]:
        """``[lease, done, dead, meta, pending, pending index]``: KEYS of the ledger scripts."""
        return list(_ledger_keys(self, scope)[:6])

    def hold_keys(self, scope: Scope) -> list[str]:
        """``[scheduled record, cancelled marker]``: what the claim checks besides the ledger."""
        return list(_ledger_keys(self, scope)[6:])

    def _record(self, kind: str, campaign_id: str, idempotency_key: str) -> str:
        base = self.bucket_for(campaign_id, idempotency_key).base
        return _record_key(base, kind, f"{_part(campaign_id)}:{_part(idempotency_key)}")

    def pending(self, campaign_id: str, idempotency_key: str) -> str:
        """Pending record of a trigger (scoped by campaign and key: producers know no project)."""
        return self._record("pending", campaign_id, idempotency_key)

    def scheduled(self, campaign_id: str, idempotency_key: str) -> str:
        """Scheduled record of a trigger not yet due (campaign and key, like pending)."""
        return self._record("scheduled", campaign_id, idempotency_key)

    def cancelled(self, campaign_id: str, idempotency_key: str) -> str:
        """Marker of a trigger cancelled before it was sent (campaign and key)."""
        return self._record("cancelled", campaign_id, idempotency_key)

    def scope_pattern(self, state: str, campaign_id: str, idempotency_key: str) -> str:
        """``SCAN MATCH`` pattern of a state key for a campaign and key in any project."""
        base = self.bucket_for(campaign_id, idempotency_key).base
        base = base.replace("{", "\\{").replace("}", "\\}")  # literal braces, not a glob
        return f"{base}:{state}:*:{_part(campaign_id)}:{_part(idempotency_key)}"

    # --- a project's fleet-wide keys ----------------------------------------
    def _project(self, name: str, project_id: str) -> str:
        if self.tagged:
            return f"{self._tagged('project=' + _part(project_id))}:{name}"
        return f"{self.prefix}:{name}:{_part(project_id)}"

    def ratelimit(self, project_id: str) -> str:
        """The fleet-wide rate limiter of a project."""
        return self._project("ratelimit", project_id)

    def breaker(self, project_id: str) -> str:
        """The fleet-wide circuit breaker of a project."""
        return self._project("breaker", project_id)

    def breaker_window(self, project_id: str) -> str:
        """The fleet's recent request outcomes, which the breaker judges."""
        return f"{self.breaker(project_id)}:window"

    # --- the fleet's keys ----------------------------------------------------
    @property
    def projects(self) -> str:
        """Set of the project ids the fleet's workers send for (registered at start-up)."""
        return f"{self._tagged('fleet')}:projects"

    @property
    def workers(self) -> str:
        """Hash of worker process names by short id (attempt histories store the id)."""
        return f"{self._tagged('fleet')}:workers"

    @property
    def worker_seq(self) -> str:
        """Counter handing out worker short ids."""
        return f"{self._tagged('fleet')}:worker-seq"

    @property
    def reconciler_lease(self) -> str:
        """Held by the one worker sweeping pending records right now."""
        return f"{self._tagged('fleet')}:reconciler"

    @property
    def stats(self) -> str:
        """Hash of fleet-wide counters."""
        return f"{self._tagged('fleet')}:stats"


#: Scopes whose ledger keys are kept built: a delivery's claim and commit (and
#: any renewal between them) use the same eight keys, which cost 16 percent-
#: encodings to build. Deliveries of one process overlap by at most the pool's
#: concurrency, far below this.
LEDGER_KEYS_CACHED = 1024


def _scope_key(base: str, state: str, encoded_scope: str) -> str:
    """``lease``, ``done``, ``dead``, ``meta``: a state of one scope (project, campaign, key)."""
    return f"{base}:{state}:{encoded_scope}"


def _record_key(base: str, kind: str, campaign_and_key: str) -> str:
    """``pending``, ``scheduled``, ``cancelled``: a record of a trigger (campaign and key)."""
    return f"{base}:{kind}:{campaign_and_key}"


@functools.lru_cache(maxsize=LEDGER_KEYS_CACHED)
def _ledger_keys(space: KeySpace, scope: Scope) -> tuple[str, ...]:
    """A scope's ledger keys then its hold keys (:meth:`KeySpace.scope_keys`, ``hold_keys``).

    The same names as :meth:`KeySpace.lease` and the others, with the bucket
    looked up and each part encoded once instead of once a key.
    """
    bucket = space.bucket_for(scope.campaign_id, scope.idempotency_key)
    base = bucket.base
    trigger = f"{_part(scope.campaign_id)}:{_part(scope.idempotency_key)}"
    scoped = f"{_part(scope.project_id)}:{trigger}"
    return (
        _scope_key(base, "lease", scoped),
        _scope_key(base, "done", scoped),
        _scope_key(base, "dead", scoped),
        _scope_key(base, "meta", scoped),
        _record_key(base, "pending", trigger),
        bucket.pending_index,
        _record_key(base, "scheduled", trigger),
        _record_key(base, "cancelled", trigger),
    )
