"""``clix-worker check``: ready to run? One finding per line; exit 0 only if all pass.

Findings, in order: the settings, the credentials and plans (``--worker``, the
default), the store (answers; TLS and whether its certificate was verified; the
ACL user, never its password; persistence and eviction, see
:mod:`worker.readiness`), the Sentinel primaries (:mod:`worker.cli.sentinel_check`)
and the broker. ``--json`` prints
``{"ok": bool, "findings": [{"name", "ok", "detail", "verified"}, ...]}``.
"""

from __future__ import annotations

import sys
from typing import NoReturn
from urllib.parse import unquote, urlsplit

import click

from config.settings import ConfigurationError, Settings, get_settings
from worker.cli.console import RET_FAILED, RET_OK, emit
from worker.cli.sentinel_check import sentinel_findings
from worker.readiness import Finding, store_findings

__all__ = ["check"]


@click.command()
@click.option(
    "--worker/--no-worker",
    "for_worker",
    default=True,
    show_default=True,
    help="Also require what a sending worker needs (credentials, plans).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=5.0,
    show_default=True,
    help="Seconds to wait for Redis and the broker.",
)
@click.option("--json", "as_json", is_flag=True)
def check(for_worker: bool, timeout_s: float, as_json: bool) -> None:
    """Readiness: settings valid, Redis and the broker answer and keep what they are given."""
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        _report([Finding("settings", False, str(exc))], as_json)
    findings = [Finding("settings", True, "valid")]
    if for_worker:
        findings.append(_credentials(settings))
    findings += _store(settings, timeout_s)
    findings += sentinel_findings(settings)
    findings.append(_broker(settings, timeout_s))
    _report([_scrubbed(f, settings) for f in findings], as_json)


def _report(findings: list[Finding], as_json: bool) -> NoReturn:
    ok = all(f.ok for f in findings)
    human = "\n".join(
        f"{f.name:<18} {'ok' if f.ok else 'FAILED'}{'' if f.verified else ' (unverified)'}"
        f"  {f.detail}"
        for f in findings
    )
    emit({"ok": ok, "findings": [f.as_dict() for f in findings]}, as_json, human)
    sys.exit(RET_OK if ok else RET_FAILED)


def _credentials(settings: Settings) -> Finding:
    try:
        from tasks.context import plan_registry

        settings.require_credentials()
        plans = plan_registry(settings.clix_plans)
    except ConfigurationError as exc:
        return Finding("credentials", False, str(exc))
    return Finding("credentials", True, f"set; {len(plans)} trigger plan(s)")


def _store(settings: Settings, timeout_s: float) -> list[Finding]:
    import redis as redis_lib
    from redis.exceptions import RedisClusterException

    from config.connections import store_client

    try:  # a cluster client connects as it is made
        conn = store_client(settings, timeout_s=timeout_s, connect_timeout_s=timeout_s, retry=False)
    except (RedisClusterException, redis_lib.RedisError, OSError) as exc:
        return [Finding("redis", False, _connection_error(exc))]
    try:
        conn.ping()
        return [Finding("redis", True, "answers"), *store_findings(settings, conn)]
    except (redis_lib.RedisError, OSError) as exc:
        return [Finding("redis", False, _connection_error(exc))]
    finally:
        conn.close()


def _broker(settings: Settings, timeout_s: float) -> Finding:
    from config.celery_app import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - kombu raises transport-specific errors
        return Finding("broker", False, _connection_error(exc))
    return Finding("broker", True, "answers")


def _connection_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        text += (
            " (the server's certificate is not signed by a CA in CLIX_REDIS_TLS_CA_FILE, "
            "or does not name the URL's host)"
        )
    return text


def _scrubbed(finding: Finding, settings: Settings) -> Finding:
    """The finding without any password of the Redis URLs (a safety net: none is expected)."""
    detail = finding.detail
    for url in {settings.redis_url, settings.broker_url}:
        password = urlsplit(url).password
        for secret in filter(None, {password, password and unquote(password)}):
            detail = detail.replace(secret, "**")
    return (
        finding
        if detail == finding.detail
        else Finding(finding.name, finding.ok, detail, finding.verified)
    )
