"""The broker's transport as the app's connections name it (no Redis needed: nothing connects)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery import Celery

from config.broker_transport import carries_pushes, transport_for
from config.celery_app import celery_config
from config.result_backend import ClixCelery
from config.settings import Settings


def _app(settings: Settings, cls: type[Celery] = ClixCelery) -> Celery:
    app = cls("transport-names")
    app.conf.update(celery_config(settings))
    return app


@pytest.mark.parametrize("app_class", [ClixCelery, Celery])
@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("redis://127.0.0.1:6390/0", "redis://"),
        ("rediss://127.0.0.1:6390/0", "rediss://"),
        ("redis+sentinel://127.0.0.1:26390/main/0", "sentinel://"),
    ],
)
def test_the_app_names_its_broker_by_the_urls_scheme_for_flower_and_the_banner(
    url: str, scheme: str, app_class: type[Celery], make_settings: Callable[..., Settings]
) -> None:
    app = _app(make_settings(redis_url=url), app_class)
    with app.connection() as conn:
        assert conn.as_uri().startswith(scheme)
        assert type(conn.transport).__module__ == "config.broker_transport"
    # the producer pool's connections too (kombu's own PooledConnection class)
    with app.producer_or_acquire() as producer:
        assert producer.connection.as_uri().startswith(scheme)


def test_amqp_and_other_transports_keep_kombus_own(make_settings: Callable[..., Settings]) -> None:
    assert transport_for("amqp://guest:guest@127.0.0.1:5672//") is None
    assert transport_for("memory://") is None
    app = _app(make_settings(celery_broker_url="memory://"))
    assert not carries_pushes(app)


def test_only_an_app_on_our_channel_is_handed_a_pending_record_to_push(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:6390/0")
    assert carries_pushes(_app(settings))
    # the same configuration on a plain Celery app still names our transport
    assert carries_pushes(_app(settings, Celery))
    prefixed = _app(settings)
    prefixed.conf.broker_transport_options = {"global_keyprefix": "x:"}
    assert not carries_pushes(prefixed)  # the script's keys would miss the prefix
