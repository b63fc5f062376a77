"""Settings: the only reader of the environment (and of a `.env` file).

Every default, TTL and bound of the system lives here, with its unit in its
name. The names under "Public contract" in DESIGN.md section 4 are promises to
users; the rest are tuning knobs, prefixed ``CLIX_`` like the public ones.

The settings also check themselves against each other, because several of the
system's guarantees only hold when the numbers fit together
(:mod:`config.contradictions`).

Producers and the inspection commands never need the Clix credentials; a
worker that sends calls :meth:`Settings.require_credentials` at start-up.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.contradictions import contradictions
from config.sentinel import SentinelTarget, parse_sentinel_url

__all__ = ["ConfigurationError", "Settings", "get_settings", "is_cluster_url"]

DEFAULT_BASE_URL = "https://api.clix.so"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: Deliveries one worker process runs at once by default (threads; see
#: config.celery_app). A process tops out near 450 triggers/s (one core), so
#: hiding 200 ms of Clix latency takes ~90 requests in flight: at 64 it capped
#: at 64 / 0.2 s = 320/s (measured 301-308); at 128 it reached 370, costing
#: nothing measurable at 0 or 50 ms (README, Performance).
DEFAULT_CONCURRENCY = 128
#: A delivery ends this long before its message's visibility timeout runs out:
#: room for the commit, the acknowledgement and clock drift between hosts.
VISIBILITY_MARGIN_S = 5.0


class ConfigurationError(ValueError):
    """A setting is missing, malformed or contradicts another one.

    The message names the environment variable to fix.
    """


#: Buckets of the key layout on a Redis Cluster unless ``CLIX_KEY_SLOTS`` says otherwise.
DEFAULT_CLUSTER_KEY_SLOTS = 16


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in ("redis+cluster", "rediss+cluster")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Configuration of producers, workers and the CLI.

    Field names map to upper-case environment variables (``clix_api_key`` is
    ``CLIX_API_KEY``).
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- public contract (DESIGN.md section 4) -------------------------------
    clix_project_id: str | None = Field(None, description="Clix project id (workers only).")
    clix_api_key: SecretStr | None = Field(None, description="Clix secret API key (workers only).")
    clix_base_url: str = Field(DEFAULT_BASE_URL, description="Clix API base URL.")
    redis_url: str = Field(DEFAULT_REDIS_URL, description="Idempotency store, DLQ, limiter.")
    celery_broker_url: str | None = Field(None, description="Broker; defaults to REDIS_URL.")
    clix_redis_tls_ca_file: str | None = Field(
        None,
        description="rediss://: PEM CA bundle for the servers' certificates (default: system).",
    )
    clix_redis_tls_cert_file: str | None = Field(
        None, description="rediss://: client certificate (PEM), for servers that require one."
    )
    clix_redis_tls_key_file: str | None = Field(
        None, description="rediss://: the client certificate's private key (PEM)."
    )
    clix_redis_tls_verify: bool = Field(
        True,
        description=(
            "rediss://: verify the server's certificate and host name; false only for a "
            "throwaway test server (anyone on the path could then read the password)."
        ),
    )
    clix_plans: str | None = Field(None, description="Trigger plan files or folders.")
    clix_plans_strict: bool = Field(
        False, description="Properties a plan does not declare are errors, not warnings."
    )
    clix_pii_warning: bool = Field(
        True, description="Warn at enqueue about PII-looking properties of plan-less campaigns."
    )
    clix_max_attempts: int = Field(5, ge=1, le=100, description="HTTP attempts per delivery.")
    clix_backoff_initial_s: float = Field(0.5, gt=0, description="First backoff wait.")
    clix_backoff_max_s: float = Field(8.0, gt=0, description="Cap on one backoff wait.")
    clix_retry_deadline_s: float = Field(30.0, gt=0, description="Total retry time per delivery.")
    clix_rate_limit_per_s: float = Field(1000.0, gt=0, description="Fleet-wide request rate.")

    # --- tuning --------------------------------------------------------------
    clix_rate_limit_burst: int | None = Field(
        None, ge=1, description="Requests allowed at once after a quiet spell (default rate/10)."
    )
    clix_rate_limit_max_wait_s: float = Field(
        5.0, gt=0, description="Longest single wait for a request slot."
    )
    clix_rate_limit_low_watermark: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Slow the fleet down when X-RateLimit-Remaining/Limit falls to this share.",
    )
    clix_reconcile_grace_s: float = Field(
        30.0, gt=0, description="A trigger pending this long with no message in sight is lost."
    )
    clix_reconcile_interval_s: float = Field(
        10.0, gt=0, description="How often one worker of the fleet sweeps pending triggers."
    )
    clix_reconcile_batch: int = Field(500, ge=1, description="Pending records per sweep.")
    clix_schedule_tick_s: float = Field(
        0.5,
        gt=0,
        le=1.0,
        description="Longest pause of each worker's schedule mover (it also wakes at due times).",
    )
    clix_schedule_batch: int = Field(
        200, ge=1, description="Scheduled triggers one mover takes per round trip."
    )
    clix_schedule_retake_s: float = Field(
        3.0,
        gt=0,
        description="A scheduled trigger taken by a mover that died is taken again after this.",
    )
    clix_attempt_history: int = Field(
        20, ge=0, le=100, description="Attempts remembered per trigger (0: none)."
    )
    clix_duplicate_wait_s: float = Field(
        3.0, ge=0, description="A duplicate waits this long for the original's trigger_id."
    )
    clix_breaker_probe_s: float = Field(5.0, gt=0, description="Outage: probe interval.")
    clix_auth_probe_s: float = Field(30.0, gt=0, description="401/403: probe interval.")
    clix_breaker_window_s: float = Field(
        10.0, gt=0, description="Fleet-wide window of recent requests the breaker judges."
    )
    clix_breaker_min_samples: int = Field(
        10, ge=1, description="Requests in the window before the breaker may open."
    )
    clix_breaker_failure_ratio: float = Field(
        0.8, gt=0, le=1, description="Share of recent requests failing that opens the breaker."
    )
    clix_systemic_failure_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Share of the fleet's recent requests failing above which a spent retry budget "
            "requeues the trigger (an outage) instead of dead-lettering it."
        ),
    )
    clix_request_timeout_s: float = Field(10.0, gt=0, description="Timeout of one HTTP request.")
    clix_retry_after_max_s: float = Field(
        20.0, gt=0, description="Cap on one Retry-After wait honoured for a 429."
    )
    clix_rate_limited_max_wait_s: float = Field(
        60.0, ge=0, description="Total time one delivery may wait out 429s (not attempts)."
    )
    clix_http_pool_size: int = Field(
        DEFAULT_CONCURRENCY,
        ge=1,
        description="Idle keep-alive connections to Clix kept per process (its concurrency).",
    )
    clix_lease_s: float = Field(
        45.0, gt=0, description="In-flight claim lease, renewed before every request."
    )
    clix_visibility_timeout_s: float = Field(
        60.0, gt=0, description="Redis broker: unacked messages are handed out again after this."
    )
    clix_unacked_restore_interval_s: float = Field(
        5.0, gt=0, description="Redis broker: how often workers look for expired unacked messages."
    )
    clix_idempotency_ttl_s: int = Field(
        86_400, ge=60, description="How long a done/dead-lettered key is remembered."
    )
    clix_redelivery_limit: int = Field(
        5, ge=1, description="Deliveries of one key before it is dead-lettered as poison."
    )
    clix_queue: str = Field("clix.triggers", min_length=1, description="Broker queue name.")
    clix_amqp_queue_type: Literal["quorum", "classic"] = Field(
        "quorum", description="RabbitMQ broker: type of the durable trigger queue."
    )
    clix_amqp_delivery_limit: int = Field(
        1000,  # config.celery_app.AMQP_DELIVERY_LIMIT
        ge=0,
        description=(
            "RabbitMQ quorum queue: deliveries of one message before RabbitMQ dead-letters it "
            "into our DLQ (0: leave the limit to a policy)."
        ),
    )
    clix_dlq_raw_max_bytes: int = Field(
        65_536, ge=1024, description="Undecodable message bodies are kept in the DLQ up to this."
    )
    clix_key_prefix: str = Field("clix", min_length=1, description="Namespace of Redis keys.")
    clix_key_slots: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Buckets of the key layout (config.keys): default 1, 16 on a Redis Cluster; "
        "fixed for the life of the store's data.",
    )
    clix_result_ttl_s: int = Field(
        3_600,
        ge=60,
        description=(
            "Celery task results (what AsyncResult.get() reads) expire after; the ledger "
            "remembers every trigger_id for CLIX_IDEMPOTENCY_TTL_S anyway."
        ),
    )
    clix_task_sent_events: bool = Field(
        False,
        description=(
            "Producers publish Celery's task-sent event (Flower shows a trigger while it is "
            "queued); one more broker publish per enqueue."
        ),
    )
    clix_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve Prometheus metrics from each worker's main process on this port.",
    )
    clix_broker_sentinel_master: str | None = Field(
        None,
        description="Master name of a kombu-style sentinel:// CELERY_BROKER_URL "
        "(broker_transport_options['master_name']).",
    )
    clix_redis_sentinel_password: SecretStr | None = Field(
        None,
        description="Password of the sentinels themselves (not the primary's, which is in "
        "the URL); store and broker.",
    )
    clix_redis_commit_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Replicas that must have a commit (Redis WAIT) before its message is "
        "acknowledged; 0: do not wait (see README, Production Redis).",
    )
    clix_redis_commit_wait_ms: int = Field(
        50,
        ge=1,
        description="Longest wait of one commit for those replicas, in ms.",
    )
    clix_log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Worker log lines: json, text, or auto (text on a terminal, else json)."
    )

    @field_validator("clix_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"CLIX_BASE_URL must be an http(s) URL with a host, got {value!r}")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError(
                "CLIX_BASE_URL: plain http:// is only allowed for loopback hosts "
                f"(localhost, 127.0.0.0/8, ::1), got host {parts.hostname!r}; use https://"
            )
        return value

    @field_validator("clix_log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("clix_metrics_port", mode="before")
    @classmethod
    def _blank_port_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "clix_project_id",
        "clix_redis_tls_ca_file",
        "clix_redis_tls_cert_file",
        "clix_redis_tls_key_file",
    )
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        problems = self.contradictions()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def contradictions(self) -> list[str]:
        """Return every way in which the settings break a guarantee (empty: none)."""
        return contradictions(self)

    # --- derived values ------------------------------------------------------
    @property
    def broker_url(self) -> str:
        """The Celery broker: ``CELERY_BROKER_URL``, else ``REDIS_URL``."""
        return self.celery_broker_url or self.redis_url

    @property
    def store_sentinel(self) -> SentinelTarget | None:
        """The Sentinel-managed store of ``REDIS_URL=redis+sentinel://...``, else None."""
        return parse_sentinel_url(self.redis_url)

    @property
    def broker_sentinel(self) -> SentinelTarget | None:
        """The Sentinel-managed Redis broker (either URL form), else None."""
        return parse_sentinel_url(self.broker_url, self.clix_broker_sentinel_master)

    @property
    def store_is_cluster(self) -> bool:
        """Whether the store is a Redis Cluster (``redis+cluster://``)."""
        return is_cluster_url(self.redis_url)

    @property
    def broker_is_cluster(self) -> bool:
        """Whether the broker URL names a Redis Cluster (which Celery cannot use as a broker)."""
        return is_cluster_url(self.broker_url)

    @property
    def key_slots(self) -> int:
        """Buckets of the key layout: ``CLIX_KEY_SLOTS``, else 16 on a cluster, else 1."""
        if self.clix_key_slots is not None:
            return self.clix_key_slots
        return DEFAULT_CLUSTER_KEY_SLOTS if self.store_is_cluster else 1

    @property
    def max_renewal_gap_s(self) -> float:
        """Longest time between two lease renewals of a live delivery."""
        return (
            self.clix_request_timeout_s
            + max(self.clix_backoff_max_s, self.clix_retry_after_max_s)
            + self.clix_rate_limit_max_wait_s
        )

    @property
    def rate_limit_give_up_s(self) -> float:
        """How long a delivery waits for a request slot in all before going back to the queue."""
        return 4 * self.clix_rate_limit_max_wait_s

    @property
    def rate_limit_burst(self) -> int:
        """``CLIX_RATE_LIMIT_BURST``, or a tenth of a second's worth of requests."""
        return self.clix_rate_limit_burst or max(1, int(self.clix_rate_limit_per_s / 10))

    @property
    def delivery_deadline_s(self) -> float:
        """How long one delivery may keep sending, from the moment its message arrived.

        Every wait (backoff, ``Retry-After``, a rate-limit slot) and every request
        must end within it, so a delivery is over well before the Redis broker
        hands its message out again (``CLIX_VISIBILITY_TIMEOUT_S``): no second
        copy grows while the first still works.
        """
        return self.clix_visibility_timeout_s - VISIBILITY_MARGIN_S

    @property
    def retry_horizon_s(self) -> float:
        """Longest time copies of one trigger can keep arriving through redelivery."""
        # each delivery ends within its message's visibility timeout
        return self.clix_visibility_timeout_s * (self.clix_redelivery_limit + 1)

    def require_credentials(self) -> tuple[str, SecretStr]:
        """Return ``(project_id, api_key)`` or raise naming the missing variable."""
        missing = [
            name
            for name, value in (
                ("CLIX_PROJECT_ID", self.clix_project_id),
                ("CLIX_API_KEY", self.clix_api_key and self.clix_api_key.get_secret_value()),
            )
            if not value
        ]
        if missing:
            raise ConfigurationError(
                f"{' and '.join(missing)} must be set for a worker that sends triggers "
                "(environment variable or .env file)"
            )
        assert self.clix_project_id is not None
        assert self.clix_api_key is not None
        return self.clix_project_id, self.clix_api_key


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load settings once per process; raise :class:`ConfigurationError` when invalid."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None


def _describe(exc: Exception) -> str:
    from pydantic import ValidationError

    assert isinstance(exc, ValidationError)
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        named = not where or message.startswith(where)
        lines.append(message if named else f"{where}: {message}")
    return "invalid settings: " + "; ".join(lines)
