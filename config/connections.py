"""Connections to Redis: the one place that turns settings into Redis clients.

Every Redis client of the system is made here: the store's (ledger, DLQ,
limiter, breaker, pending records), the short-lived ones of checks and
metrics, and the reconciler's view into a Redis broker. What kind of Redis is
behind a URL (TLS, an ACL user, Sentinel, and later Cluster) is decided
here and nowhere else, so every caller gets the same treatment.

TLS: a ``rediss://`` URL gets the ``CLIX_REDIS_TLS_*`` options of
:func:`config.redis_tls.tls_options` (the same ones Celery's broker and result
backend get), certificate and host name verified unless
``CLIX_REDIS_TLS_VERIFY=false``. ACL users come with the URL
(``rediss://user:password@host:port/db``); the commands they need are
:data:`config.redis_acl.WORKER_COMMANDS`.

A Sentinel URL (:mod:`config.sentinel`) gives a client of the current primary:
redis-py asks the sentinels for its address on every new connection, and a
connection that finds the old primary gone or demoted (``READONLY``) is
dropped and opened again at the new one. To the store, a failover is a
dropped connection like any other: the retry below repeats the command at the
new primary, and a failover longer than that budget fails the call and the
delivery routes it (requeue, or the commit's own retry while its lease lasts).

A store URL ``redis+cluster://[user:password@]host:port[,host:port...][/0]``
(``rediss+cluster://`` with TLS) makes a :class:`redis.cluster.RedisCluster`
client: the hosts are startup nodes, the client discovers the rest and
follows ``MOVED``/``ASK``. It serves the commands the store uses (scripts whose
keys share a slot, see :mod:`config.keys`), so it is handed around as a
``redis.Redis``. The broker is never a cluster (:mod:`config.settings` refuses it).

The store's retry policy lives here too: after a dropped connection a command
is repeated on a fresh connection a few times within about a second. Every
script the store runs is safe to repeat (owner-keyed, see
:mod:`tasks.idempotency`); a store that stays away longer fails the call and
the delivery routes the error (:mod:`tasks.errors`).
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from config.redis_tls import tls_options
from config.sentinel import SentinelTarget, parse_sentinel_url, sentinel_kwargs
from config.settings import Settings, is_cluster_url

__all__ = [
    "STORE_MAX_CONNECTIONS",
    "STORE_RETRIES",
    "STORE_RETRY_CAP_S",
    "broker_is_redis",
    "broker_redis_client",
    "cluster_nodes",
    "sentinel_manager",
    "store_client",
]

#: Reconnect-and-repeat budget of one store command (about 1 s of waiting).
STORE_RETRIES = 4
STORE_RETRY_CAP_S = 0.5
#: Most connections to the store per process (one per thread at work, plus the
#: worker's own: reconciler, breaker watch, metrics). A cap, not a reservation:
#: connections open as threads need them; redis-py's default of 100 would fail
#: a worker run at -c 100 and up.
STORE_MAX_CONNECTIONS = 1024


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The startup nodes of a cluster URL, in order."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":")
        nodes.append((host.strip("[]"), int(port or 6379)))
    return nodes


def _cluster(settings: Settings, url: str, **options: Any) -> redis.Redis:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only: end REDIS_URL in /0 or nothing")
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],  # type: ignore[no-untyped-call]
        username=unquote(user) or None,
        password=unquote(password) or None,
        ssl=url.lower().startswith("rediss+"),
        **tls_options(settings, url),
        # built even when slots are missing, so `clix-worker check` can say which
        require_full_coverage=False,
        **options,
    )
    # not a redis.Redis, but it serves every command the store uses (module docstring)
    return cast(redis.Redis, client)


def _client(settings: Settings, url: str, **options: Any) -> redis.Redis:
    if is_cluster_url(url):
        return _cluster(settings, url, **options)
    sentinel = parse_sentinel_url(url, settings.clix_broker_sentinel_master)
    if sentinel is None:
        return redis.Redis.from_url(url, **tls_options(settings, url), **options)
    credentials = {"username": sentinel.username, "password": sentinel.password}
    client: redis.Redis = sentinel_manager(sentinel, settings).master_for(  # type: ignore[no-untyped-call]
        sentinel.master_name,
        db=sentinel.db,
        **{k: v for k, v in credentials.items() if v is not None},
        **options,
    )
    return client


def sentinel_manager(target: SentinelTarget, settings: Settings) -> Sentinel:
    """A client of ``target``'s sentinels (``CLIX_REDIS_SENTINEL_PASSWORD`` when set)."""
    options = sentinel_kwargs(settings.clix_redis_sentinel_password)
    return Sentinel(list(target.sentinels), sentinel_kwargs=options)  # type: ignore[no-untyped-call]


def store_client(
    settings: Settings,
    *,
    timeout_s: float = 10.0,
    connect_timeout_s: float = 5.0,
    decode_responses: bool = False,
    retry: bool = True,
) -> redis.Redis:
    """A client of the store (``REDIS_URL``): one pool, shared by the threads of a process.

    ``retry=False`` for one-shot checks that should report a failure at once.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "health_check_interval": 30,
        "max_connections": STORE_MAX_CONNECTIONS,
        "decode_responses": decode_responses,
    }
    if retry:
        options["retry"] = Retry(
            ExponentialBackoff(cap=STORE_RETRY_CAP_S, base=0.05), STORE_RETRIES
        )
    return _client(settings, settings.redis_url, **options)


def broker_is_redis(settings: Settings) -> bool:
    """Whether the broker is a Redis (direct or behind Sentinel), not RabbitMQ."""
    direct = settings.broker_url.lower().startswith(("redis://", "rediss://", "unix://"))
    return direct or settings.broker_sentinel is not None


def broker_redis_client(settings: Settings, *, timeout_s: float = 10.0) -> redis.Redis:
    """A client of a Redis broker (``CELERY_BROKER_URL``), for reading its queues."""
    return _client(
        settings, settings.broker_url, socket_timeout=timeout_s, socket_connect_timeout=5.0
    )
