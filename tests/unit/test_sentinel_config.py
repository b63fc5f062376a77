"""Sentinel URLs: parsed once, turned into redis-py, kombu and Celery configuration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError
from redis.sentinel import SentinelConnectionPool

from config.celery_app import celery_config, result_backend_url
from config.connections import (
    STORE_RETRIES,
    broker_is_redis,
    broker_redis_client,
    sentinel_manager,
    store_client,
)
from config.sentinel import SENTINEL_TIMEOUT_S, SentinelTarget, parse_sentinel_url
from config.settings import Settings

SECRET = "pw-Zq9/do-not-print"
OURS = "redis+sentinel://app:pw-Zq9%2Fdo-not-print@s1:26380,s2,[::1]:26381/mymaster/3"
KOMBU = "sentinel://s1:26380/2;sentinel://s2:26379/2"


def test_our_url_names_sentinels_master_db_and_the_primarys_credentials() -> None:
    target = parse_sentinel_url(OURS)
    assert target == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        master_name="mymaster",
        db=3,
        username="app",
        password=SECRET,
    )
    assert SECRET not in repr(target)
    assert SECRET not in target.describe()


def test_database_defaults_to_0_and_plain_urls_are_not_sentinel() -> None:
    target = parse_sentinel_url("redis+sentinel://:pw@h/svc")
    assert target is not None
    assert (target.db, target.username, target.password) == (0, None, "pw")
    assert parse_sentinel_url("redis://localhost:6379/0") is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1,h2", "master name"),
        ("redis+sentinel://h1/svc/x", "number"),
        ("redis+sentinel://h1:99999/svc", "out of range"),
        ("redis+sentinel://h1/svc/0/extra", "master name"),
    ],
)
def test_malformed_sentinel_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_sentinel_url(url)


def test_kombus_form_takes_the_master_name_apart_and_keeps_every_sentinel() -> None:
    target = parse_sentinel_url(KOMBU, "mymaster")
    assert target is not None
    assert target.sentinels == (("s1", 26380), ("s2", 26379))
    assert (target.master_name, target.db) == ("mymaster", 2)
    with pytest.raises(ValueError, match="CLIX_BROKER_SENTINEL_MASTER"):
        parse_sentinel_url(KOMBU)


def test_kombu_url_carries_credentials_on_every_sentinel() -> None:
    target = parse_sentinel_url(OURS)
    assert target is not None
    assert target.kombu_url() == (
        "sentinel://app:pw-Zq9%2Fdo-not-print@s1:26380/3;"
        "sentinel://app:pw-Zq9%2Fdo-not-print@s2:26379/3;"
        "sentinel://app:pw-Zq9%2Fdo-not-print@[::1]:26381/3"
    )


def test_settings_refuse_a_broken_sentinel_url_naming_the_variable_not_the_password(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(redis_url=f"redis+sentinel://:{SECRET}@h1,h2")
    assert "REDIS_URL" in str(caught.value)
    assert SECRET not in str(caught.value)
    with pytest.raises(ValidationError, match="CLIX_BROKER_SENTINEL_MASTER"):
        make_settings(celery_broker_url=KOMBU)
    with pytest.raises(ValidationError, match="redis\\+sentinel://"):
        make_settings(redis_url=KOMBU)


def test_broker_and_result_backend_follow_the_sentinels_with_timeouts_and_their_password(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_url=OURS, clix_redis_sentinel_password="sentinel-pw")
    config: dict[str, Any] = celery_config(settings, argv=[])
    target = settings.store_sentinel
    assert target is not None
    assert config["broker_url"] == config["result_backend"] == target.kombu_url()
    assert config["result_backend"] == result_backend_url(settings)  # the commit writes results
    expected = {
        "master_name": "mymaster",
        "sentinel_kwargs": {
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "password": "sentinel-pw",
        },
    }
    for options in (config["broker_transport_options"], config["result_backend_transport_options"]):
        assert expected.items() <= options.items()
    assert config["broker_transport_options"]["socket_timeout"] > 0
    assert broker_is_redis(settings)


def test_a_kombu_style_broker_url_gets_its_master_name_from_the_setting(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(celery_broker_url=KOMBU, clix_broker_sentinel_master="brokermaster")
    config = celery_config(settings, argv=[])
    assert config["broker_url"] == KOMBU  # the same sentinels, in the same form
    assert config["broker_transport_options"]["master_name"] == "brokermaster"
    assert "master_name" not in config["result_backend_transport_options"]  # a plain store
    assert config["result_backend"] == settings.redis_url


def test_store_and_broker_clients_ask_the_sentinels_for_the_primary(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        redis_url=OURS, celery_broker_url=KOMBU, clix_broker_sentinel_master="brokermaster"
    )
    store = store_client(settings)  # connects lazily: nothing needs to answer here
    pool = store.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.is_master) == ("mymaster", True)
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", SECRET)
    assert kwargs["retry"].get_retries() == STORE_RETRIES  # a failover is a retried blip
    broker = broker_redis_client(settings).connection_pool
    assert isinstance(broker, SentinelConnectionPool)
    assert (broker.service_name, broker.connection_kwargs["db"]) == ("brokermaster", 2)


def test_sentinels_get_timeouts_of_their_own(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url=OURS)
    target = settings.store_sentinel
    assert target is not None
    manager = sentinel_manager(target, settings)
    assert [c.connection_pool.connection_kwargs["socket_timeout"] for c in manager.sentinels] == [
        SENTINEL_TIMEOUT_S
    ] * 3


def test_tls_to_sentinel_is_refused_naming_the_setting(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(redis_url=f"rediss+sentinel://:{SECRET}@h1/main")
    message = str(caught.value)
    assert "REDIS_URL: TLS to a Sentinel-managed Redis is not supported" in message
    assert "CELERY_BROKER_URL" not in message  # unset: it follows REDIS_URL, said once
    assert SECRET not in message
