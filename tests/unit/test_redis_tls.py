"""TLS and ACL settings reach every Redis client; check's findings degrade, never guess."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from config.celery_app import celery_config
from config.connections import broker_redis_client, store_client
from config.redis_acl import WORKER_COMMANDS, acl_rules, acl_setuser_command
from config.redis_tls import tls_options
from config.settings import Settings
from worker.readiness import connection_findings, eviction_finding, persistence_finding

TLS_URL = "rediss://clix:s3cret-pw@redis.example:6380/0"


def build(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_rediss_verifies_certificate_and_host_by_default(pem: Path) -> None:
    settings = build(redis_url=TLS_URL, clix_redis_tls_ca_file=str(pem))
    assert tls_options(settings, TLS_URL) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(pem),
    }


def test_verification_is_off_only_when_switched_off() -> None:
    settings = build(redis_url=TLS_URL, clix_redis_tls_verify=False)
    assert tls_options(settings, TLS_URL) == {
        "ssl_cert_reqs": ssl.CERT_NONE,
        "ssl_check_hostname": False,
    }


def test_plain_redis_urls_get_no_tls_options(pem: Path) -> None:
    settings = build(redis_url=TLS_URL, celery_broker_url="redis://broker:6379/0")
    assert tls_options(settings, "redis://broker:6379/0") == {}
    assert "broker_use_ssl" not in celery_config(settings, argv=[])
    assert celery_config(settings, argv=[])["redis_backend_use_ssl"]["ssl_cert_reqs"] == (
        ssl.CERT_REQUIRED
    )


def test_broker_and_result_backend_get_the_store_clients_options(pem: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    settings = build(
        redis_url=TLS_URL,
        clix_redis_tls_ca_file=str(pem),
        clix_redis_tls_cert_file=str(cert),
        clix_redis_tls_key_file=str(key),
    )
    config = celery_config(settings, argv=[])
    expected = tls_options(settings, TLS_URL)
    assert expected["ssl_certfile"] == str(cert)
    assert expected["ssl_keyfile"] == str(key)
    assert config["broker_use_ssl"] == expected
    assert config["redis_backend_use_ssl"] == expected
    for client in (store_client(settings), broker_redis_client(settings)):
        kwargs = client.connection_pool.connection_kwargs
        assert client.connection_pool.connection_class is redis.SSLConnection
        assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"]) == (ssl.CERT_REQUIRED, str(pem))
        assert kwargs["username"] == "clix"


def test_an_amqps_broker_is_left_to_kombus_own_ssl_settings() -> None:
    settings = build(redis_url=TLS_URL, celery_broker_url="amqps://guest@rabbit//")
    assert "broker_use_ssl" not in celery_config(settings, argv=[])


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"redis_url": "redis://r:6379/0", "clix_redis_tls_ca_file": "CA"}, "neither REDIS_URL"),
        ({"redis_url": TLS_URL, "clix_redis_tls_ca_file": "/nowhere/ca.pem"}, "not a readable"),
        ({"redis_url": TLS_URL, "clix_redis_tls_key_file": "KEY"}, "needs CLIX_REDIS_TLS_CERT"),
        ({"redis_url": TLS_URL + "?ssl_cert_reqs=none"}, "REDIS_URL carries ssl_cert_reqs"),
        (
            {"redis_url": TLS_URL, "celery_broker_url": TLS_URL + "?ssl_ca_certs=/x"},
            "CELERY_BROKER_URL carries ssl_ca_certs",
        ),
    ],
)
def test_tls_settings_that_would_not_apply_are_refused(
    values: dict[str, str], named: str, pem: Path
) -> None:
    values = {k: str(pem) if v in ("CA", "KEY") else v for k, v in values.items()}
    with pytest.raises(ValidationError, match=named):
        build(**values)


def test_acl_rules_grant_only_the_listed_commands() -> None:
    rules = acl_rules()
    assert rules[:3] == ("~*", "&*", "-@all")
    assert set(rules[3:]) == {f"+{c}" for c in WORKER_COMMANDS}
    assert not any(c.startswith("@") or c.startswith("config") for c in WORKER_COMMANDS)
    assert acl_setuser_command().startswith("ACL SETUSER clix on >PASSWORD ~* &* -@all +ping")


def test_findings_name_the_user_never_the_password() -> None:
    tls, user = connection_findings(build(redis_url=TLS_URL))
    assert tls.ok
    assert "verified against the system's trusted CAs" in tls.detail
    assert user.detail == "ACL user 'clix'"
    assert "s3cret" not in tls.detail + user.detail
    [plain, _] = connection_findings(build(redis_url="redis://localhost:6379/0"))
    assert plain.detail.startswith("off")


class _ManagedRedis:
    """INFO allowed, CONFIG refused (NOPERM), as on many managed services."""

    def __init__(self, info: dict[str, dict[str, Any]], config: dict[str, str] | None) -> None:
        self._info, self._config = info, config

    def info(self, section: str) -> dict[str, Any]:
        return self._info[section]

    def config_get(self, name: str) -> dict[str, str]:
        if self._config is None:
            raise redis.exceptions.NoPermissionError("NOPERM this user has no permissions")
        return {name: self._config[name]}


def test_persistence_is_refused_only_when_neither_aof_nor_rdb_is_on() -> None:
    off = {"persistence": {"aof_enabled": 0}}
    assert persistence_finding(_ManagedRedis(off, {"save": ""})).ok is False  # type: ignore[arg-type]
    rdb = persistence_finding(_ManagedRedis(off, {"save": "3600 1"}))  # type: ignore[arg-type]
    assert rdb.ok
    assert "RDB snapshots only" in rdb.detail
    aof = persistence_finding(_ManagedRedis({"persistence": {"aof_enabled": 1}}, None))  # type: ignore[arg-type]
    assert (aof.ok, aof.verified) == (True, True)


def test_denied_config_makes_persistence_unverified_not_refused() -> None:
    finding = persistence_finding(_ManagedRedis({"persistence": {"aof_enabled": 0}}, None))  # type: ignore[arg-type]
    assert (finding.ok, finding.verified) == (True, False)
    assert "could not be verified" in finding.detail


def test_eviction_reads_info_and_refuses_anything_but_noeviction() -> None:
    lru = eviction_finding(_ManagedRedis({"memory": {"maxmemory_policy": "allkeys-lru"}}, None))  # type: ignore[arg-type]
    assert lru.ok is False
    assert "allkeys-lru" in lru.detail
    fine = eviction_finding(_ManagedRedis({"memory": {"maxmemory_policy": "noeviction"}}, None))  # type: ignore[arg-type]
    assert fine.ok


def test_every_command_our_lua_scripts_call_is_granted() -> None:
    # a script calling a command the list lacks fails with NOPERM on an ACL user
    root = Path(__file__).resolve().parents[2]
    called = {
        name.lower()
        for package in ("config", "tasks", "worker")
        for source in (root / package).rglob("*.py")
        for name in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", source.read_text())
    }
    assert "zadd" in called  # the pattern still finds the scripts
    assert called <= set(WORKER_COMMANDS)
