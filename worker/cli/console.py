"""How the CLI talks to its caller: exit codes, errors, JSON or human output.

Exit codes (DESIGN.md section 4): :data:`RET_OK` success; :data:`RET_FAILED`
the operation failed or what was checked is invalid; :data:`RET_USAGE` bad
usage (unknown option, missing or unreadable file, invalid configuration).
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from config.settings import ConfigurationError, Settings, get_settings

__all__ = [
    "RET_FAILED",
    "RET_OK",
    "RET_USAGE",
    "dead_letter_queue",
    "emit",
    "fail",
    "idempotency_store",
    "load_settings",
]

RET_OK = 0
RET_FAILED = 1
RET_USAGE = 2


def load_settings() -> Settings:
    """The settings, or exit with :data:`RET_USAGE` naming what is wrong."""
    try:
        return get_settings()
    except ConfigurationError as exc:
        fail(str(exc), RET_USAGE)


def fail(message: str, code: int = RET_FAILED) -> NoReturn:
    """Print ``clix-worker: message`` to stderr and exit with ``code``."""
    click.echo(f"clix-worker: {message}", err=True)
    sys.exit(code)


def emit(data: Any, as_json: bool, human: str) -> None:
    """Print ``data`` as one JSON document (``--json``) or the human text."""
    click.echo(json.dumps(data, indent=None, ensure_ascii=False) if as_json else human)


def idempotency_store(current: Settings) -> Any:
    """The ledger, for inspection (no Clix credentials needed)."""
    from tasks import context

    return context.idempotency_store(current, context.redis_client(current))


def dead_letter_queue(current: Settings) -> Any:
    """The DLQ, for inspection and replay (no Clix credentials needed)."""
    from tasks import context

    return context.dead_letter_queue(current, context.redis_client(current))
