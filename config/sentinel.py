"""Redis Sentinel addresses: the URL forms the store and the broker accept, parsed.

Two forms name a Sentinel-managed Redis:

* ours, for ``REDIS_URL`` (and ``CELERY_BROKER_URL``)::

      redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER_NAME[/DB]

  the sentinels (port 26379 by default), then the master name the sentinels
  monitor, then the database (0 by default). USER and PASSWORD are those of
  the Redis primary and replicas, percent-encoded;
* kombu's, for ``CELERY_BROKER_URL`` only::

      sentinel://[USER:PASSWORD@]HOST[:PORT][/DB];sentinel://HOST[:PORT][/DB]...

  with the master name in ``CLIX_BROKER_SENTINEL_MASTER`` (kombu's
  ``broker_transport_options['master_name']``).

The sentinels' own password, when they require one, is not the primary's: it
is ``CLIX_REDIS_SENTINEL_PASSWORD`` (kombu's and Celery's ``sentinel_kwargs``).
Both forms become one :class:`SentinelTarget`; :mod:`config.connections` makes
the store's clients from it and :mod:`config.celery_app` the broker's and the
result backend's URLs in the form kombu and Celery read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from pydantic import SecretStr

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "SENTINEL_TIMEOUT_S",
    "SentinelTarget",
    "is_sentinel_url",
    "parse_sentinel_url",
    "sentinel_kwargs",
]

DEFAULT_SENTINEL_PORT = 26379
#: Socket and connect timeout of one question to one sentinel: a sentinel that
#: does not answer is skipped for the next one instead of stalling a failover.
SENTINEL_TIMEOUT_S = 1.0

OUR_SCHEME = "redis+sentinel://"
KOMBU_SCHEME = "sentinel://"

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class SentinelTarget:
    """The sentinels to ask, the master they monitor, and how to log into it."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line

    def kombu_url(self) -> str:
        """The ``sentinel://...;sentinel://...`` form kombu and Celery's backend read.

        Every sentinel carries the credentials: kombu parses the next one's on
        failing over to it.
        """
        auth = ""
        if self.password is not None or self.username:
            user = quote(self.username or "", safe="")
            auth = f"{user}:{quote(self.password or '', safe='')}@"
        return ";".join(
            f"sentinel://{auth}{_netloc(host, port)}/{self.db}" for host, port in self.sentinels
        )

    def describe(self) -> str:
        """``master NAME via host:port,...`` (no credentials)."""
        where = ",".join(_netloc(h, p) for h, p in self.sentinels)
        return f"master {self.master_name!r} db {self.db} via {where}"


def sentinel_kwargs(password: SecretStr | None) -> dict[str, Any]:
    """Connection options of the sentinels themselves (redis-py's ``sentinel_kwargs``).

    Timeouts of their own: redis-py, kombu and Celery give sentinels none once
    ``sentinel_kwargs`` is set, and one sentinel that stopped answering must
    not stall the search for the primary. ``password``: the sentinels' (the
    URL's is the primary's, which kombu and Celery never send to a sentinel).
    """
    options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    }
    if password is not None:
        options["password"] = password.get_secret_value()
    return options


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel-managed Redis (either form)."""
    return url.lower().startswith((OUR_SCHEME, KOMBU_SCHEME))


def parse_sentinel_url(url: str, master_name: str | None = None) -> SentinelTarget | None:
    """The target of a Sentinel URL; None for any other URL.

    ``master_name``: the master of kombu's form (it has no place for it).
    Raises ``ValueError`` naming what is wrong; never with the password in it.
    """
    lowered = url.lower()
    if lowered.startswith(OUR_SCHEME):
        return _parse_ours(url[len(OUR_SCHEME) :])
    if lowered.startswith(KOMBU_SCHEME):
        return _parse_kombu(url, master_name)
    return None


def _parse_ours(rest: str) -> SentinelTarget:
    netloc, _, path = rest.partition("/")
    credentials, hosts = _split_auth(netloc)
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError(
            "a redis+sentinel:// URL needs the master name after the sentinels: "
            "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"
        )
    return SentinelTarget(
        sentinels=tuple(_host_port(h) for h in hosts.split(",")),
        master_name=unquote(parts[0]),
        db=_db(parts[1] if len(parts) == 2 else ""),
        username=credentials[0],
        password=credentials[1],
    )


def _parse_kombu(url: str, master_name: str | None) -> SentinelTarget:
    if not master_name:
        raise ValueError(
            "a sentinel:// broker URL needs its master name in CLIX_BROKER_SENTINEL_MASTER "
            "(or use redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB])"
        )
    sentinels: list[tuple[str, int]] = []
    first: tuple[tuple[str | None, str | None], str] | None = None
    for chunk in filter(None, (c.strip() for c in url.split(";"))):
        if not chunk.lower().startswith(KOMBU_SCHEME):
            raise ValueError("every part of a sentinel:// broker URL must start with sentinel://")
        netloc, _, path = chunk[len(KOMBU_SCHEME) :].partition("/")
        credentials, host = _split_auth(netloc)
        sentinels.append(_host_port(host))
        if first is None:
            first = (credentials, path)
    assert first is not None  # the URL starts with sentinel://
    (username, password), path = first
    return SentinelTarget(tuple(sentinels), master_name, _db(path), username, password)


def _split_auth(netloc: str) -> tuple[tuple[str | None, str | None], str]:
    auth, at, hosts = netloc.rpartition("@")
    if not at:
        return (None, None), netloc
    user, colon, password = auth.partition(":")
    if not colon:  # a lone word before @ is a user name, as redis-py reads it
        return (unquote(user) or None, None), hosts
    return (unquote(user) or None, unquote(password)), hosts


def _host_port(text: str) -> tuple[str, int]:
    match = _HOST_PORT.match(text.strip())
    if match is None:
        raise ValueError(f"not a sentinel address (HOST[:PORT]): {text!r}")
    port = int(match["port"]) if match["port"] else DEFAULT_SENTINEL_PORT
    if not 0 < port < 65536:
        raise ValueError(f"sentinel port out of range: {port}")
    return match["v6"] or match["host"], port


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"the database of a Sentinel URL is a number, got {text!r}")
    return int(text)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
