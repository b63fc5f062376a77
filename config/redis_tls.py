"""TLS to Redis: what a ``rediss://`` URL needs besides itself, for every client.

One set of settings serves the store (``REDIS_URL``), a Redis broker
(``CELERY_BROKER_URL``) and Celery's result backend (the store):

=============================  ==============================================
setting                        meaning
=============================  ==============================================
``CLIX_REDIS_TLS_CA_FILE``     PEM bundle of the CAs that sign the servers'
                               certificates (default: the system trust store)
``CLIX_REDIS_TLS_CERT_FILE``   client certificate, for servers that require one
                               (``tls-auth-clients yes``); may hold the key too
``CLIX_REDIS_TLS_KEY_FILE``    its private key
``CLIX_REDIS_TLS_VERIFY``      ``true`` (default): the server's certificate must
                               chain to the CA and name the URL's host;
                               ``false`` only for a throwaway test server
=============================  ==============================================

The options apply only to ``rediss://`` URLs: a ``redis://`` URL stays plain
text (and a TLS setting with no ``rediss://`` URL is refused, see
:func:`tls_problems`, so a typo cannot quietly send the password in clear).
``ssl_*`` options in a URL's query are refused too: redis-py lets them
override ours, kombu ignores them, Celery's backend reads them, so the same
URL would be verified by some clients and not by others.

Why we always pass the options ourselves, even with verification on: kombu
turns a bare ``rediss://`` broker URL into a connection that checks *no*
certificate (it logs "defaulting to insecure SSL behaviour"), and Celery's
Redis result backend refuses a ``rediss://`` URL without ``ssl_cert_reqs``.
:func:`tls_options` is the one dict that redis-py, kombu's ``broker_use_ssl``
and Celery's ``redis_backend_use_ssl`` all accept (they hand it to
``redis.SSLConnection``).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["TLS_SCHEMES", "tls_options", "tls_problems", "uses_tls"]

#: URL schemes that mean "Redis over TLS".
TLS_SCHEMES = ("rediss", "rediss+cluster")


def uses_tls(url: str) -> bool:
    """Whether ``url`` is a Redis URL over TLS (``rediss://``)."""
    return urlsplit(url).scheme.lower() in TLS_SCHEMES


def tls_options(settings: Settings, url: str) -> dict[str, Any]:
    """``redis.SSLConnection`` options for ``url``: empty unless it is ``rediss://``.

    ``ssl_cert_reqs`` is the :mod:`ssl` constant (Celery's result backend
    accepts nothing else reliably); the host name is checked whenever the
    certificate is.
    """
    if not uses_tls(url):
        return {}
    verify = settings.clix_redis_tls_verify
    options: dict[str, Any] = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
        "ssl_check_hostname": verify,
    }
    if settings.clix_redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.clix_redis_tls_ca_file
    if settings.clix_redis_tls_cert_file:
        options["ssl_certfile"] = settings.clix_redis_tls_cert_file
    if settings.clix_redis_tls_key_file:
        options["ssl_keyfile"] = settings.clix_redis_tls_key_file
    return options


def tls_problems(settings: Settings) -> list[str]:
    """Every way the TLS settings contradict the URLs or the files on disk (empty: none)."""
    files = {
        "CLIX_REDIS_TLS_CA_FILE": settings.clix_redis_tls_ca_file,
        "CLIX_REDIS_TLS_CERT_FILE": settings.clix_redis_tls_cert_file,
        "CLIX_REDIS_TLS_KEY_FILE": settings.clix_redis_tls_key_file,
    }
    given = [name for name, path in files.items() if path]
    problems: list[str] = []
    if given and not (uses_tls(settings.redis_url) or uses_tls(settings.broker_url)):
        problems.append(
            f"{' and '.join(given)} set, but neither REDIS_URL nor CELERY_BROKER_URL is a "
            "rediss:// URL: the connection would not use TLS (write rediss://)"
        )
    problems.extend(
        f"{name}={path!r} is not a readable file"
        for name, path in files.items()
        if path and not _readable(path)
    )
    for name, url in (
        ("REDIS_URL", settings.redis_url),
        ("CELERY_BROKER_URL", settings.broker_url),
    ):
        in_query = sorted(k for k in parse_qs(urlsplit(url).query) if k.startswith("ssl_"))
        if in_query:
            # redis-py, kombu and Celery each read (or ignore) these differently
            problems.append(
                f"{name} carries {', '.join(in_query)}: use the CLIX_REDIS_TLS_* settings "
                "instead (CLIX_REDIS_TLS_VERIFY=false for ssl_cert_reqs=none), so every "
                "client gets the same TLS options"
            )
    if settings.clix_redis_tls_key_file and not settings.clix_redis_tls_cert_file:
        problems.append("CLIX_REDIS_TLS_KEY_FILE needs CLIX_REDIS_TLS_CERT_FILE (its certificate)")
    return problems


def _readable(path: str) -> bool:
    try:
        with Path(path).open("rb"):
            return True
    except OSError:
        return False
