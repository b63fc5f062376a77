"""What ``clix-worker check`` finds about the store's Redis, one :class:`Finding` each.

Each finding says whether a guarantee holds (``ok``), what was seen
(``detail``, never a password) and whether it could be seen at all
(``verified``: a managed Redis often refuses ``CONFIG``; then the finding is
``ok`` but unverified, and says what to make sure of by hand). A new kind of
Redis (Sentinel, Cluster) adds its own finding function to
:func:`store_findings`.

Refused (``ok`` false), because the store then loses what the worker promised
to keep: an eviction policy other than ``noeviction`` (ledger keys, pending
records and queued triggers are evicted under memory pressure) and a primary
that does not persist at all (``appendonly no`` and no RDB ``save`` schedule:
a restart forgets every key). RDB snapshots alone pass, with a note.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from config.redis_tls import uses_tls
from config.settings import Settings

__all__ = [
    "Finding",
    "cluster_finding",
    "connection_findings",
    "eviction_finding",
    "persistence_finding",
    "store_findings",
]


@dataclass(frozen=True)
class Finding:
    """One line of ``check``: ``name``, whether it passes, what was seen."""

    name: str
    ok: bool
    detail: str
    verified: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The finding as JSON-ready data."""
        return asdict(self)


def store_findings(settings: Settings, conn: redis.Redis) -> list[Finding]:
    """Everything ``check`` reports about the store (``conn`` already answered PING)."""
    cluster = [cluster_finding(conn)] if settings.store_is_cluster else []
    return [
        *connection_findings(settings),
        *cluster,
        persistence_finding(conn),
        eviction_finding(conn),
    ]


def cluster_finding(conn: redis.Redis) -> Finding:
    """A Redis Cluster store: refused unless every one of the 16,384 slots is served.

    The buckets of the key layout (:mod:`config.keys`) spread over the whole
    slot range, so a trigger whose bucket sits in a missing slot could not be stored.
    """
    info = cast(RedisCluster, conn).cluster_info()  # one node's view of the whole cluster
    state = str(info.get("cluster_state", "?"))
    served = int(info.get("cluster_slots_ok", 0))
    detail = (
        f"cluster state {state}, {served}/{REDIS_CLUSTER_HASH_SLOTS} slots covered, "
        f"{int(info.get('cluster_size', 0))} primaries"
    )
    if served < REDIS_CLUSTER_HASH_SLOTS or state != "ok":
        return Finding("redis_cluster", False, f"{detail}: every slot must be served")
    return Finding("redis_cluster", True, detail)


def connection_findings(settings: Settings) -> list[Finding]:
    """How the store is reached: TLS (and whether its certificate is verified), which user."""
    url = settings.redis_url
    if not uses_tls(url):
        scheme = url.split("://", 1)[0] + "://"
        tls = Finding("redis_tls", True, f"off ({scheme}): commands and password in plain text")
    elif settings.clix_redis_tls_verify:
        trust = (
            "CLIX_REDIS_TLS_CA_FILE"
            if settings.clix_redis_tls_ca_file
            else "the system's trusted CAs"
        )
        client = ", client certificate sent" if settings.clix_redis_tls_cert_file else ""
        tls = Finding(
            "redis_tls",
            True,
            f"on, server certificate and host name verified against {trust}{client}",
        )
    else:
        tls = Finding(
            "redis_tls",
            True,
            "on, server certificate NOT verified (CLIX_REDIS_TLS_VERIFY=false): anyone on "
            "the path can pose as the server and read the password",
        )
    username = urlsplit(url).username
    who = f"ACL user {unquote(username)!r}" if username else "the default user"
    return [tls, Finding("redis_user", True, who)]


def _info(conn: redis.Redis, section: str) -> dict[str, Any] | None:
    try:
        return dict(conn.info(section))
    except redis.ResponseError:  # NOPERM, or INFO renamed by the provider
        return None


def _config(conn: redis.Redis, name: str) -> str | None:
    try:
        value = conn.config_get(name).get(name)
    except redis.ResponseError:  # NOPERM, or CONFIG renamed (managed Redis)
        return None
    return None if value is None else str(value.decode() if isinstance(value, bytes) else value)


def persistence_finding(conn: redis.Redis) -> Finding:
    """Refuse a primary with neither AOF nor an RDB schedule; unverified when unreadable."""
    name = "redis_persistence"
    info = _info(conn, "persistence")
    if info is not None and int(info.get("aof_enabled", 0)) == 1:
        return Finding(name, True, "appendonly yes")
    save = _config(conn, "save")
    if save is None:
        seen = "appendonly no" if info is not None else "INFO and CONFIG GET not allowed"
        return Finding(
            name,
            True,
            f"could not be verified ({seen}; the RDB save schedule is unreadable without "
            "CONFIG GET): make sure the primary persists (appendonly yes)",
            verified=False,
        )
    if save.strip():
        return Finding(
            name,
            True,
            f"RDB snapshots only (save {save}): a crash forgets writes since the last "
            "snapshot; appendonly yes is safer",
        )
    return Finding(
        name,
        False,
        "appendonly no and no RDB save schedule: a restart forgets the ledger, the DLQ and "
        "queued triggers; set appendonly yes",
    )


def eviction_finding(conn: redis.Redis) -> Finding:
    """Refuse any ``maxmemory-policy`` but ``noeviction``; unverified when unreadable."""
    name = "redis_eviction"
    info = _info(conn, "memory")
    policy = info.get("maxmemory_policy") if info is not None else None
    if policy is None:
        policy = _config(conn, "maxmemory-policy")
    if policy is None:
        return Finding(
            name,
            True,
            "could not be verified (INFO and CONFIG GET not allowed): make sure "
            "maxmemory-policy is noeviction",
            verified=False,
        )
    if policy == "noeviction":
        return Finding(name, True, "maxmemory-policy noeviction")
    return Finding(
        name,
        False,
        f"maxmemory-policy {policy}: under memory pressure Redis deletes ledger keys and "
        "queued triggers; set maxmemory-policy noeviction",
    )
