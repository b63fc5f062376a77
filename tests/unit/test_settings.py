"""Settings: defaults, the loopback rule for http://, contradictions, secrets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config.settings import ConfigurationError, Settings, get_settings

SECRET = "sk-settings-Zq9-do-not-print"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No setting comes from this process's environment or a stray .env file."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture
def fresh_get_settings(clean_env: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield clean_env
    get_settings.cache_clear()


def build(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def refusal(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        build(**values)
    return str(caught.value)


# --- defaults -------------------------------------------------------------------------


def test_defaults_match_the_public_contract(clean_env: pytest.MonkeyPatch) -> None:
    s = build()
    assert s.clix_project_id is None
    assert s.clix_api_key is None
    assert s.clix_base_url == "https://api.clix.so"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.celery_broker_url is None
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.clix_plans is None
    assert s.clix_max_attempts == 5
    assert s.clix_backoff_initial_s == 0.5
    assert s.clix_backoff_max_s == 8.0
    assert s.clix_retry_deadline_s == 30.0
    assert s.clix_rate_limit_per_s == 1000.0
    assert s.clix_idempotency_ttl_s == 86_400
    assert s.contradictions() == []


def test_rate_limit_and_breaker_tuning_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = build()
    assert s.clix_rate_limit_burst is None
    assert s.rate_limit_burst == 100  # a tenth of a second's worth at 1000/s
    assert s.clix_rate_limit_max_wait_s == 5.0
    assert s.clix_rate_limit_low_watermark == 0.02
    assert s.clix_breaker_probe_s == 5.0
    assert s.clix_auth_probe_s == 30.0
    assert s.clix_breaker_window_s == 10.0
    assert s.clix_breaker_min_samples == 10
    assert s.clix_systemic_failure_ratio == 0.5
    assert s.clix_breaker_failure_ratio == 0.8
    assert s.max_renewal_gap_s == 35


@pytest.mark.parametrize(
    ("values", "burst"),
    [
        ({"clix_rate_limit_per_s": 250}, 25),
        ({"clix_rate_limit_per_s": 5}, 1),  # never below one request
        ({"clix_rate_limit_per_s": 0.5}, 1),
        ({"clix_rate_limit_per_s": 1000, "clix_rate_limit_burst": 7}, 7),
    ],
)
def test_rate_limit_burst_defaults_to_a_tenth_of_the_rate_unless_set(
    values: dict[str, Any], burst: int
) -> None:
    assert build(**values).rate_limit_burst == burst


def test_default_lease_stays_under_visibility_timeout_and_recovery_fits_120_s(
    clean_env: pytest.MonkeyPatch,
) -> None:
    s = build()
    assert s.max_renewal_gap_s < s.clix_lease_s < s.clix_visibility_timeout_s
    # recovery after SIGKILL: visibility timeout plus one restore sweep
    assert s.clix_visibility_timeout_s + s.clix_unacked_restore_interval_s <= 120


def test_broker_url_defaults_to_redis_url_and_can_differ(clean_env: pytest.MonkeyPatch) -> None:
    assert build(redis_url="redis://r:6379/2").broker_url == "redis://r:6379/2"
    amqp = build(redis_url="redis://r:6379/2", celery_broker_url="amqp://guest@mq//")
    assert amqp.broker_url == "amqp://guest@mq//"


def test_environment_variables_are_read_case_insensitively(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CLIX_PROJECT_ID", "proj-env")
    clean_env.setenv("CLIX_MAX_ATTEMPTS", "7")
    s = build()
    assert (s.clix_project_id, s.clix_max_attempts) == ("proj-env", 7)


def test_a_dotenv_file_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "local.env").write_text("CLIX_PROJECT_ID=proj-dotenv\nCLIX_MAX_ATTEMPTS=4\n")
    s = Settings(_env_file=tmp_path / "local.env")  # type: ignore[call-arg]
    assert (s.clix_project_id, s.clix_max_attempts) == ("proj-dotenv", 4)


# --- CLIX_BASE_URL --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080",
        "http://127.0.0.1:8080",
        "http://127.5.6.7",
        "http://[::1]:9000",
        "https://api.clix.so",
        "https://clix.internal:8443",
    ],
)
def test_base_url_accepted(url: str) -> None:
    assert build(clix_base_url=url).clix_base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://api.clix.so",
        "http://10.0.0.5:8080",
        "http://localhost.evil.test",
        "http://127.0.0.1.evil.test",
        "http://[::2]",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused_naming_the_variable(url: str) -> None:
    message = refusal(clix_base_url=url)
    assert "CLIX_BASE_URL" in message
    assert "loopback" in message


@pytest.mark.parametrize("url", ["ftp://api.clix.so", "api.clix.so", "https://", ""])
def test_base_url_without_http_scheme_or_host_is_refused(url: str) -> None:
    assert "CLIX_BASE_URL must be an http(s) URL with a host" in refusal(clix_base_url=url)


def test_trailing_slash_of_base_url_is_dropped() -> None:
    assert build(clix_base_url="https://api.clix.so/").clix_base_url == "https://api.clix.so"


# --- contradictions -------------------------------------------------------------------


def test_backoff_initial_over_max_is_refused() -> None:
    message = refusal(clix_backoff_initial_s=10, clix_backoff_max_s=5)
    assert "CLIX_BACKOFF_INITIAL_S is larger than CLIX_BACKOFF_MAX_S" in message


def test_backoff_max_not_under_visibility_timeout_is_refused() -> None:
    message = refusal(clix_backoff_max_s=60, clix_lease_s=59, clix_visibility_timeout_s=60)
    assert "CLIX_BACKOFF_MAX_S=60 must stay under CLIX_VISIBILITY_TIMEOUT_S=60" in message


def test_retry_after_cap_not_under_visibility_timeout_is_refused() -> None:
    message = refusal(clix_retry_after_max_s=70, clix_visibility_timeout_s=60)
    assert "CLIX_RETRY_AFTER_MAX_S=70 must stay under CLIX_VISIBILITY_TIMEOUT_S=60" in message


@pytest.mark.parametrize("lease", [60, 61])
def test_lease_not_under_visibility_timeout_is_refused(lease: int) -> None:
    message = refusal(clix_lease_s=lease, clix_visibility_timeout_s=60)
    assert f"CLIX_LEASE_S={lease} must stay under CLIX_VISIBILITY_TIMEOUT_S=60" in message


def test_restore_interval_not_under_visibility_timeout_is_refused() -> None:
    message = refusal(clix_unacked_restore_interval_s=60, clix_visibility_timeout_s=60)
    assert "CLIX_UNACKED_RESTORE_INTERVAL_S=60 must stay under" in message


@pytest.mark.parametrize("lease", [30, 35])
def test_lease_not_over_request_timeout_plus_longest_waits_is_refused(lease: int) -> None:
    # gap = 10 s request timeout + max(8 s backoff, 20 s Retry-After cap)
    #       + 5 s longest single wait for a rate-limit slot = 35 s
    message = refusal(clix_lease_s=lease)
    assert f"CLIX_LEASE_S={lease} must exceed one request timeout plus the longest" in message
    assert "(35 s)" in message


def test_lease_just_over_the_renewal_gap_is_accepted() -> None:
    assert build(clix_lease_s=35.5).max_renewal_gap_s == 35


def test_renewal_gap_counts_the_longest_rate_limit_slot_wait() -> None:
    assert build(clix_rate_limit_max_wait_s=1).max_renewal_gap_s == 10 + 20 + 1
    # the longer of backoff cap and Retry-After cap counts, not both
    assert build(clix_backoff_max_s=25, clix_lease_s=50).max_renewal_gap_s == 10 + 25 + 5


def test_rate_limit_max_wait_not_under_visibility_timeout_is_refused() -> None:
    message = refusal(clix_rate_limit_max_wait_s=60, clix_visibility_timeout_s=60)
    assert "CLIX_RATE_LIMIT_MAX_WAIT_S=60 must stay under CLIX_VISIBILITY_TIMEOUT_S=60" in message


def test_a_delivery_ends_a_margin_before_the_visibility_timeout() -> None:
    assert build().delivery_deadline_s == 60 - 5
    assert build(clix_visibility_timeout_s=100).delivery_deadline_s == 95
    # a delivery never outlives its message's visibility: no second copy grows meanwhile
    assert build().delivery_deadline_s < build().clix_visibility_timeout_s


def test_a_visibility_timeout_too_short_for_one_request_is_refused() -> None:
    message = refusal(
        clix_visibility_timeout_s=12,
        clix_lease_s=11,
        clix_backoff_max_s=0.5,
        clix_retry_after_max_s=0.5,
        clix_rate_limit_max_wait_s=0.5,
    )
    assert "CLIX_VISIBILITY_TIMEOUT_S=12 leaves a delivery 7 s" in message
    assert "CLIX_REQUEST_TIMEOUT_S=10" in message


def test_idempotency_ttl_not_over_the_retry_horizon_is_refused() -> None:
    # defaults: each delivery ends within the visibility timeout (60 s), and a
    # key is delivered at most 5 + 1 times: 360 s
    assert build().retry_horizon_s == 360
    message = refusal(clix_idempotency_ttl_s=360)
    assert "CLIX_IDEMPOTENCY_TTL_S=360 must outlast the retry horizon (360 s" in message
    assert build(clix_idempotency_ttl_s=361).clix_idempotency_ttl_s == 361


def test_every_contradiction_is_reported_at_once() -> None:
    message = refusal(clix_backoff_initial_s=10, clix_backoff_max_s=5, clix_lease_s=70)
    assert "CLIX_BACKOFF_INITIAL_S" in message
    assert "CLIX_LEASE_S=70 must stay under" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("clix_max_attempts", 0),
        ("clix_max_attempts", 101),
        ("clix_backoff_initial_s", 0),
        ("clix_retry_deadline_s", -1),
        ("clix_rate_limit_per_s", 0),
        ("clix_rate_limit_burst", 0),
        ("clix_rate_limit_max_wait_s", 0),
        ("clix_rate_limit_low_watermark", 1.5),
        ("clix_breaker_probe_s", 0),
        ("clix_auth_probe_s", 0),
        ("clix_breaker_window_s", 0),
        ("clix_systemic_failure_ratio", 0),
        ("clix_breaker_min_samples", 0),
        ("clix_breaker_failure_ratio", 0),
        ("clix_breaker_failure_ratio", 1.1),
        ("clix_redelivery_limit", 0),
        ("clix_idempotency_ttl_s", 59),
        ("clix_queue", ""),
        ("clix_key_prefix", ""),
    ],
)
def test_out_of_range_values_are_refused(name: str, value: object) -> None:
    assert name in refusal(**{name: value})


# --- credentials and secrets ----------------------------------------------------------


def test_require_credentials_names_both_missing_variables(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build().require_credentials()
    assert "CLIX_PROJECT_ID and CLIX_API_KEY must be set" in str(caught.value)


def test_require_credentials_names_only_the_missing_key(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build(clix_project_id="proj-1", clix_api_key="").require_credentials()
    assert "CLIX_API_KEY" in str(caught.value)
    assert "CLIX_PROJECT_ID" not in str(caught.value)


def test_blank_project_id_counts_as_missing(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"^CLIX_PROJECT_ID must be set"):
        build(clix_project_id="", clix_api_key=SECRET).require_credentials()


def test_require_credentials_returns_project_and_secret_key() -> None:
    project, key = build(clix_project_id="proj-1", clix_api_key=SECRET).require_credentials()
    assert project == "proj-1"
    assert key.get_secret_value() == SECRET


def test_api_key_is_not_in_repr_str_or_json() -> None:
    s = build(clix_project_id="proj-1", clix_api_key=SECRET)
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert SECRET not in s.model_dump_json()
    assert SECRET not in str(s.model_dump())


def test_api_key_is_not_echoed_by_a_validation_error() -> None:
    message = refusal(clix_api_key=SECRET, clix_base_url="http://api.clix.so")
    assert SECRET not in message


# --- get_settings ---------------------------------------------------------------------


def test_get_settings_raises_configuration_error_naming_the_variable(
    fresh_get_settings: pytest.MonkeyPatch,
) -> None:
    fresh_get_settings.setenv("CLIX_BASE_URL", "http://api.clix.so")
    fresh_get_settings.setenv("CLIX_API_KEY", SECRET)
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    assert message.startswith("invalid settings: CLIX_BASE_URL: ")
    assert "plain http:// is only allowed for loopback hosts" in message
    assert SECRET not in message


def test_get_settings_reports_a_contradiction_naming_the_variable(
    fresh_get_settings: pytest.MonkeyPatch,
) -> None:
    fresh_get_settings.setenv("CLIX_LEASE_S", "90")
    with pytest.raises(ConfigurationError, match="CLIX_LEASE_S=90 must stay under"):
        get_settings()


def test_get_settings_reports_a_malformed_number(
    fresh_get_settings: pytest.MonkeyPatch,
) -> None:
    fresh_get_settings.setenv("CLIX_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigurationError, match="CLIX_MAX_ATTEMPTS"):
        get_settings()


def test_get_settings_is_loaded_once(fresh_get_settings: pytest.MonkeyPatch) -> None:
    fresh_get_settings.setenv("CLIX_PROJECT_ID", "proj-once")
    first = get_settings()
    fresh_get_settings.setenv("CLIX_PROJECT_ID", "proj-changed")
    assert get_settings() is first
    assert first.clix_project_id == "proj-once"
