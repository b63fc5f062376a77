"""Log output of the worker: one JSON object per line, or readable text on a terminal.

Celery sets up logging itself (root logger, task logger, multiprocessing
logger). Importing this module connects to ``after_setup_logger`` and
``after_setup_task_logger`` and gives the handlers Celery installed our
formatter and a filter that masks the Clix API key:

* ``json``: one object per line with ``ts`` (ISO-8601 UTC, milliseconds),
  ``level``, ``logger``, ``message``, ``process``, ``pid``, every field of the
  structured event a record carries as ``extra={"clix": {...}}`` (see
  ``Delivery._log``) at the top level, and ``exc_type`` / ``exc`` for errors;
* ``text``: ``time level [logger] message`` (events already put their fields
  into the message as ``key=value`` pairs);
* ``auto`` (default): ``text`` when the handler writes to a terminal, else ``json``.

The choice comes from the ``CLIX_LOG_FORMAT`` setting.

Celery's own ``Task ...[id] succeeded in ...s: {...}`` line is left out below
``DEBUG`` (:class:`DropCelerySuccessLine`): the task's ``sent`` or
``deduplicated`` line says the same and more, and a third of the log volume
(and of the logging CPU) per trigger went to it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Literal

from celery._state import get_current_task
from celery.app.trace import LOG_SUCCESS
from celery.signals import after_setup_logger, after_setup_task_logger
from celery.utils.log import get_multiprocessing_logger

from config.settings import ConfigurationError, get_settings

__all__ = [
    "LOG_FORMATS",
    "REDACTED",
    "DropCelerySuccessLine",
    "JsonFormatter",
    "RedactSecret",
    "TextFormatter",
    "configure",
    "resolve_format",
]

#: Accepted values of ``CLIX_LOG_FORMAT``.
LOG_FORMATS = ("auto", "json", "text")
#: What replaces the API key when it shows up in a record.
REDACTED = "[redacted]"
#: Keys of a JSON line that a structured event's fields never overwrite.
_BASE_KEYS = frozenset(
    {"ts", "level", "logger", "message", "process", "pid", "exc_type", "exc", "stack"}
)


def _task_fields() -> dict[str, str]:
    """``task_id`` / ``task_name`` of the Celery task running in this thread, if any."""
    task = get_current_task()
    if task is None or not task.request:
        return {}
    return {"task_id": str(task.request.id), "task_name": str(task.name)}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; never fails on odd values."""

    def __init__(self, *, task: bool = False) -> None:
        """``task``: add the running Celery task's id and name (the task logger's handlers)."""
        super().__init__()
        self.task = task

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON object (no newline inside)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
            "process": record.processName,
            "pid": record.process,
        }
        if self.task:
            line.update(_task_fields())
        event = getattr(record, "clix", None)
        if isinstance(event, dict):
            for key, value in event.items():
                name = str(key)
                line[f"clix_{name}" if name in _BASE_KEYS else name] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(line, default=str, allow_nan=False)
        except (TypeError, ValueError):  # NaN, unsortable or non-string nested keys...
            return json.dumps({k: v if _plain(v) else str(v) for k, v in line.items()})


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 INFO    [clix.trigger] message``, local time."""

    def __init__(self, *, task: bool = False) -> None:
        """``task``: add ``task_name[task_id]`` of the running Celery task after the logger."""
        super().__init__()
        self.task = task

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Local time with milliseconds (``datefmt`` is ignored)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line, followed by a traceback for errors."""
        where = record.name
        fields = _task_fields() if self.task else {}
        if fields:
            where += f" {fields['task_name']}[{fields['task_id']}]"
        text = f"{self.formatTime(record)} {record.levelname:<7} [{where}] {_message(record)}"
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for extra in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if extra:
                text = f"{text}\n{extra}"
        return text


class RedactSecret(logging.Filter):
    """Mask a secret (the Clix API key) in the message, event fields and traceback of records.

    A safety net: nothing is supposed to log the key. The check is a substring
    search per record; only a record that does contain the key is rewritten.
    """

    def __init__(self, secret: str) -> None:
        """Mask ``secret``; an empty one masks nothing."""
        super().__init__()
        self._secret = secret

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"  # never the secret

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` where it contains the secret; always let it through."""
        secret = self._secret
        if not secret:
            return True
        message = _message(record)
        if secret in message:
            record.msg, record.args = message.replace(secret, REDACTED), None
        event = getattr(record, "clix", None)
        if isinstance(event, dict) and any(secret in str(v) for v in event.values()):
            record.clix = {
                k: str(v).replace(secret, REDACTED) if secret in str(v) else v
                for k, v in event.items()
            }
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and secret in record.exc_text:
            record.exc_text = record.exc_text.replace(secret, REDACTED)
        if record.stack_info and secret in record.stack_info:
            record.stack_info = record.stack_info.replace(secret, REDACTED)
        return True


class DropCelerySuccessLine(logging.Filter):
    """Leave out Celery's per-task success line unless the worker logs at ``DEBUG``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the success line (Celery's ``LOG_SUCCESS`` format) above DEBUG."""
        return record.msg is not LOG_SUCCESS or logging.getLogger().isEnabledFor(logging.DEBUG)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not lose the record
        return f"{record.msg!s} (unformattable arguments: {record.args!r})"


def _plain(value: Any) -> bool:
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    return value is None or isinstance(value, str | int | bool)


def resolve_format(setting: str, stream: Any = None) -> Literal["json", "text"]:
    """``json`` or ``text`` for a handler writing to ``stream`` (``auto``: text on a TTY)."""
    setting = setting.strip().lower()
    if setting in ("json", "text"):
        return "json" if setting == "json" else "text"
    try:
        tty = bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        tty = False
    return "text" if tty else "json"


def _from_settings() -> tuple[str, str]:
    """``(CLIX_LOG_FORMAT, API key or "")``; invalid settings: the raw variable, no key."""
    try:
        settings = get_settings()
    except ConfigurationError:
        return os.environ.get("CLIX_LOG_FORMAT", "auto"), ""
    fmt = getattr(settings, "clix_log_format", os.environ.get("CLIX_LOG_FORMAT", "auto"))
    key = settings.clix_api_key.get_secret_value() if settings.clix_api_key else ""
    return str(fmt), key


def configure(
    fmt: str | None = None,
    *,
    logger: logging.Logger | None = None,
    task: bool = False,
    secret: str | None = None,
) -> None:
    """Give every handler of ``logger`` (default: root) our formatter and the key filter.

    ``fmt`` is ``auto``, ``json`` or ``text`` (default: the ``CLIX_LOG_FORMAT``
    setting); ``secret`` the string to mask (default: ``CLIX_API_KEY``; empty:
    none). A logger without handlers gets one writing to stderr. Calling it
    again replaces what an earlier call installed.
    """
    if fmt is None or secret is None:
        setting, key = _from_settings()
        fmt, secret = fmt or setting, key if secret is None else secret
    if fmt.strip().lower() not in LOG_FORMATS:
        raise ValueError(f"CLIX_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    target = logger if logger is not None else logging.getLogger()
    if not any(not isinstance(h, logging.NullHandler) for h in target.handlers):
        target.addHandler(logging.StreamHandler())
    for handler in target.handlers:
        if isinstance(handler, logging.NullHandler):
            continue
        chosen = resolve_format(fmt, getattr(handler, "stream", None))
        handler.setFormatter(
            JsonFormatter(task=task) if chosen == "json" else TextFormatter(task=task)
        )
        for old in [f for f in handler.filters if isinstance(f, RedactSecret)]:
            handler.removeFilter(old)
        handler.addFilter(RedactSecret(secret))


def _valid_settings() -> tuple[str, str]:
    """Like :func:`_from_settings`, but an unknown format is ``auto`` (start-up goes on)."""
    fmt, key = _from_settings()
    if fmt.strip().lower() not in LOG_FORMATS:
        logging.getLogger("clix.worker").warning(
            "CLIX_LOG_FORMAT=%r is not one of %s: using auto", fmt, ", ".join(LOG_FORMATS)
        )
        fmt = "auto"
    return fmt, key


def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    """``after_setup_logger``: the root logger, and the multiprocessing one beside it."""
    fmt, key = _valid_settings()
    configure(fmt, logger=logger, secret=key)
    mp_logger = get_multiprocessing_logger()
    if mp_logger is not None and mp_logger.handlers:
        configure(fmt, logger=mp_logger, secret=key)
    trace = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, DropCelerySuccessLine) for f in trace.filters):
        trace.addFilter(DropCelerySuccessLine())


def _on_setup_task_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    """``after_setup_task_logger``: the ``celery.task`` logger (it does not propagate)."""
    fmt, key = _valid_settings()
    configure(fmt, logger=logger, task=True, secret=key)


after_setup_logger.connect(_on_setup_logger, weak=False, dispatch_uid="clix.logs.root")
after_setup_task_logger.connect(_on_setup_task_logger, weak=False, dispatch_uid="clix.logs.task")
