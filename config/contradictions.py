"""Settings that contradict each other: each problem named, with the variable to change.

Several of the system's guarantees only hold when the numbers fit together,
so :class:`config.settings.Settings` refuses values that break one (at start-up,
in the worker, Flower and every command alike):

* every single wait (backoff cap, ``Retry-After`` cap) and the lease stay
  under the broker's visibility timeout, and a whole delivery ends by
  :attr:`~config.settings.Settings.delivery_deadline_s` (the visibility timeout
  less a margin), or the Redis broker hands a message out again while its
  first delivery is still running;
* the lease outlives the longest gap between two lease renewals (one request
  timeout plus one wait), or a live delivery loses its claim to a copy;
* the idempotency window outlives the longest time a second copy of a trigger
  can still arrive, or the same key sends twice;
* the connections can be made as written: a Redis Cluster only as the store
  (with tagged keys), Sentinel URLs that name their master, TLS settings only
  with ``rediss://`` URLs (:func:`config.redis_tls.tls_problems`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from config.redis_tls import tls_problems
from config.sentinel import KOMBU_SCHEME, parse_sentinel_url

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["contradictions"]


def contradictions(settings: Settings) -> list[str]:
    """Every way in which ``settings`` break a guarantee (empty: none)."""
    return [
        *_timing_problems(settings),
        *_cluster_problems(settings),
        *tls_problems(settings),
        *_sentinel_problems(settings),
    ]


def _timing_problems(s: Settings) -> list[str]:
    vt = s.clix_visibility_timeout_s
    problems: list[str] = []
    if s.clix_backoff_initial_s > s.clix_backoff_max_s:
        problems.append("CLIX_BACKOFF_INITIAL_S is larger than CLIX_BACKOFF_MAX_S")
    for name, value in (
        ("CLIX_BACKOFF_MAX_S", s.clix_backoff_max_s),
        ("CLIX_RETRY_AFTER_MAX_S", s.clix_retry_after_max_s),
        ("CLIX_RATE_LIMIT_MAX_WAIT_S", s.clix_rate_limit_max_wait_s),
        ("CLIX_LEASE_S", s.clix_lease_s),
        ("CLIX_UNACKED_RESTORE_INTERVAL_S", s.clix_unacked_restore_interval_s),
    ):
        if value >= vt:
            problems.append(
                f"{name}={value:g} must stay under CLIX_VISIBILITY_TIMEOUT_S={vt:g}, "
                "or the broker redelivers messages that are still being worked on"
            )
    if s.delivery_deadline_s < s.clix_request_timeout_s:
        problems.append(
            f"CLIX_VISIBILITY_TIMEOUT_S={vt:g} leaves a delivery "
            f"{s.delivery_deadline_s:g} s (after a {vt - s.delivery_deadline_s:g} s margin), "
            "less than one request "
            f"(CLIX_REQUEST_TIMEOUT_S={s.clix_request_timeout_s:g}): raise the visibility "
            "timeout or lower the request timeout"
        )
    if s.max_renewal_gap_s >= s.clix_lease_s:
        problems.append(
            f"CLIX_LEASE_S={s.clix_lease_s:g} must exceed one request timeout plus the "
            f"longest single waits ({s.max_renewal_gap_s:g} s), or a live delivery "
            "loses its claim between two renewals"
        )
    if s.clix_idempotency_ttl_s <= s.retry_horizon_s:
        problems.append(
            f"CLIX_IDEMPOTENCY_TTL_S={s.clix_idempotency_ttl_s} must outlast the retry "
            f"horizon ({s.retry_horizon_s:g} s: every delivery of a key, each up to the "
            "visibility timeout), or a late copy of a trigger sends again"
        )
    return problems


def _cluster_problems(s: Settings) -> list[str]:
    problems = []
    if s.broker_is_cluster:
        problems.append(
            "CELERY_BROKER_URL is a Redis Cluster (or unset, so REDIS_URL is used): Celery's "
            "broker must be RabbitMQ (amqp://) or a plain Redis (redis://); set "
            "CELERY_BROKER_URL to one"
        )
    if s.store_is_cluster and s.key_slots == 1:
        problems.append(
            "CLIX_KEY_SLOTS=1 keeps keys untagged, which a Redis Cluster store cannot run "
            "(CROSSSLOT): leave it unset (16) or set 2 or more"
        )
    return problems


def _sentinel_problems(s: Settings) -> list[str]:
    if s.redis_url.lower().startswith(KOMBU_SCHEME):
        return [
            "REDIS_URL: kombu's sentinel:// form has no master name; write "
            "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"
        ]
    problems: list[str] = []
    for name, url, master in (
        ("REDIS_URL", s.redis_url, None),
        ("CELERY_BROKER_URL", s.broker_url, s.clix_broker_sentinel_master),
    ):
        explicit = name == "REDIS_URL" or s.celery_broker_url is not None
        if explicit and url.lower().startswith(("rediss+sentinel://", "sentinels://")):
            # not refused silently: the URL would otherwise fail deep in a client
            problems.append(
                f"{name}: TLS to a Sentinel-managed Redis is not supported yet; use "
                "redis+sentinel:// on a private network, or a TLS endpoint of the primary "
                "(rediss://) that your provider keeps pointing at the current primary"
            )
            continue
        try:
            parse_sentinel_url(url, master)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    return problems
