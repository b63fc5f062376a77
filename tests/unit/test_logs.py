"""Log output: JSON lines, the terminal format, auto selection, key masking, Celery's signals."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.app.trace import LOG_SUCCESS
from celery.signals import after_setup_logger, after_setup_task_logger

import worker.logs as logs
from config.settings import ConfigurationError, Settings
from worker.logs import (
    DropCelerySuccessLine,
    JsonFormatter,
    RedactSecret,
    TextFormatter,
    configure,
    resolve_format,
)

KEY = "sk-logs-Zq9-0123456789-never-leak-me"
EVENT = {
    "outcome": "sent",
    "task_id": "t-1",
    "campaign_id": "camp-1",
    "idempotency_key": "k-1",
    "trigger_id": "trg-1",
    "attempt": 2,
    "latency_ms": 12.5,
}
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (\w+) +\[([^\]]+)\] (.*)$")


class Stream(io.StringIO):
    """A stream that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own, outside the logger tree: no root, no pytest capture handlers."""
    log = logging.Logger(f"test.logs.{uuid.uuid4().hex[:8]}", logging.DEBUG)
    yield log
    log.handlers.clear()


def attach(log: logging.Logger, formatter: logging.Formatter, secret: str = "") -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    if secret:
        handler.addFilter(RedactSecret(secret))
    log.addHandler(handler)
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def log_event(log: logging.Logger, event: dict[str, Any], level: int = logging.INFO) -> None:
    """Log the way ``Delivery._log`` does."""
    pairs = " ".join(f"{k}={v}" for k, v in event.items())
    log.log(level, "trigger %s", pairs, extra={"clix": event})


# --- JSON -------------------------------------------------------------------


def test_json_line_carries_the_event_fields_at_the_top_level(logger: logging.Logger) -> None:
    stream = attach(logger, JsonFormatter())
    log_event(logger, EVENT)
    [line] = json_lines(stream)
    assert {k: line[k] for k in EVENT} == EVENT
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert line["level"] == "INFO"
    assert line["logger"] == logger.name
    assert line["message"].startswith("trigger outcome=sent task_id=t-1 ")
    assert line["process"] == "MainProcess"
    assert isinstance(line["pid"], int)
    assert "exc" not in line
    assert "exc_type" not in line


def test_json_line_without_an_event_has_the_base_fields_only(logger: logging.Logger) -> None:
    stream = attach(logger, JsonFormatter())
    logger.warning("Redis runs without %s", "appendonly")
    [line] = json_lines(stream)
    assert set(line) == {"ts", "level", "logger", "message", "process", "pid"}
    assert line["message"] == "Redis runs without appendonly"
    assert line["level"] == "WARNING"


def test_json_event_fields_never_replace_the_base_fields(logger: logging.Logger) -> None:
    stream = attach(logger, JsonFormatter())
    logger.info("real message", extra={"clix": {"message": "fake", "level": "x", "ts": 0}})
    [line] = json_lines(stream)
    assert line["message"] == "real message"
    assert line["level"] == "INFO"
    assert (line["clix_message"], line["clix_level"], line["clix_ts"]) == ("fake", "x", 0)


def test_json_includes_exception_type_and_traceback(logger: logging.Logger) -> None:
    stream = attach(logger, JsonFormatter())
    try:
        raise ValueError("boom\non two lines")
    except ValueError:
        logger.exception("delivery crashed")
    [line] = json_lines(stream)  # still one physical line
    assert line["exc_type"] == "ValueError"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom\non two lines" in line["exc"]
    assert line["level"] == "ERROR"


def test_json_stack_info(logger: logging.Logger) -> None:
    stream = attach(logger, JsonFormatter())
    logger.info("where am I", stack_info=True)
    [line] = json_lines(stream)
    assert "test_json_stack_info" in line["stack"]


class Unprintable:
    def __repr__(self) -> str:
        return "<unprintable>"


@pytest.mark.parametrize(
    "value",
    [
        Unprintable(),
        {1, 2},
        b"\xff\x00",
        math.nan,
        -math.inf,
        {("tuple", "key"): 1},
        {"nested": [math.nan, object()]},
        "line\nbreak\u2028separator",
    ],
    ids=["object", "set", "bytes", "nan", "inf", "tuple-key", "nested", "newlines"],
)
def test_json_never_fails_on_odd_values(logger: logging.Logger, value: Any) -> None:
    stream = attach(logger, JsonFormatter())
    logger.info("odd", extra={"clix": {"outcome": "sent", "odd": value, 3: "int key"}})
    [line] = json_lines(stream)
    assert line["outcome"] == "sent"
    assert "odd" in line
    assert line["3"] == "int key"


def test_json_survives_a_bad_format_string(logger: logging.Logger) -> None:
    stream = attach(logger, JsonFormatter())
    logger.info("%d things", "not a number")
    [line] = json_lines(stream)
    assert line["message"].startswith("%d things (unformattable arguments:")


def test_json_task_fields_come_from_the_running_task(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Request:
        id = "task-42"

    class FakeTask:
        name = "trigger_campaign"
        request = Request()

    stream = attach(logger, JsonFormatter(task=True))
    logger.info("outside a task")
    monkeypatch.setattr(logs, "get_current_task", lambda: FakeTask())
    logger.info("inside a task")
    outside, inside = json_lines(stream)
    assert "task_id" not in outside
    assert (inside["task_id"], inside["task_name"]) == ("task-42", "trigger_campaign")


# --- text -------------------------------------------------------------------


def test_text_line_is_time_level_logger_message(logger: logging.Logger) -> None:
    stream = attach(logger, TextFormatter())
    log_event(logger, EVENT)
    logger.warning("plain %s", "words")
    first, second = stream.getvalue().splitlines()
    match = TEXT_LINE.match(first)
    assert match is not None, first
    assert match.group(1) == "INFO"
    assert match.group(2) == logger.name
    assert match.group(3).startswith("trigger outcome=sent task_id=t-1 campaign_id=camp-1")
    assert "latency_ms=12.5" in match.group(3)
    second_match = TEXT_LINE.match(second)
    assert second_match is not None
    assert second_match.group(1, 3) == ("WARNING", "plain words")


def test_text_appends_the_traceback(logger: logging.Logger) -> None:
    stream = attach(logger, TextFormatter())
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("lookup failed")
    lines = stream.getvalue().splitlines()
    assert TEXT_LINE.match(lines[0])
    assert lines[0].endswith("[" + logger.name + "] lookup failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyError: 'missing'"


def test_text_names_the_running_task(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Request:
        id = "task-42"

    class FakeTask:
        name = "trigger_campaign"
        request = Request()

    monkeypatch.setattr(logs, "get_current_task", lambda: FakeTask())
    stream = attach(logger, TextFormatter(task=True))
    logger.info("hello")
    assert f"[{logger.name} trigger_campaign[task-42]] hello" in stream.getvalue()


# --- choosing the format ----------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "tty", "expected"),
    [
        ("auto", True, "text"),
        ("auto", False, "json"),
        ("AUTO ", True, "text"),
        ("json", True, "json"),
        ("json", False, "json"),
        ("text", False, "text"),
        ("Text", True, "text"),
    ],
)
def test_resolve_format(setting: str, tty: bool, expected: str) -> None:
    assert resolve_format(setting, Stream(tty)) == expected


class ClosedStream:
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


@pytest.mark.parametrize(
    "stream", [None, object(), ClosedStream()], ids=["none", "no-isatty", "closed"]
)
def test_auto_is_json_when_the_stream_cannot_say(stream: Any) -> None:
    assert resolve_format("auto", stream) == "json"


def test_configure_auto_decides_per_handler(logger: logging.Logger) -> None:
    terminal, pipe = Stream(tty=True), Stream(tty=False)
    logger.addHandler(logging.StreamHandler(terminal))
    logger.addHandler(logging.StreamHandler(pipe))
    configure("auto", logger=logger, secret="")
    log_event(logger, EVENT)
    assert TEXT_LINE.match(terminal.getvalue().splitlines()[0])
    assert json.loads(pipe.getvalue())["outcome"] == "sent"


def test_configure_explicit_format_ignores_the_terminal(logger: logging.Logger) -> None:
    terminal = Stream(tty=True)
    logger.addHandler(logging.StreamHandler(terminal))
    configure("json", logger=logger, secret="")
    log_event(logger, EVENT)
    assert json.loads(terminal.getvalue())["trigger_id"] == "trg-1"


def test_configure_refuses_an_unknown_format(logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="CLIX_LOG_FORMAT must be one of auto, json, text"):
        configure("yaml", logger=logger, secret="")


def test_configure_adds_a_stderr_handler_to_a_bare_logger(logger: logging.Logger) -> None:
    logger.addHandler(logging.NullHandler())
    configure("text", logger=logger, secret="")
    real = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    assert len(real) == 1
    assert isinstance(real[0].formatter, TextFormatter)


def test_configure_twice_keeps_one_filter(logger: logging.Logger) -> None:
    stream = Stream(tty=False)
    logger.addHandler(logging.StreamHandler(stream))
    configure("json", logger=logger, secret="first-secret")
    configure("text", logger=logger, secret=KEY)
    [handler] = logger.handlers
    assert isinstance(handler.formatter, TextFormatter)
    assert len([f for f in handler.filters if isinstance(f, RedactSecret)]) == 1
    logger.info("both first-secret and %s", KEY)
    assert "first-secret" in stream.getvalue()  # only the current key is masked
    assert KEY not in stream.getvalue()


def test_configure_reads_the_settings(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIX_LOG_FORMAT", "text")
    settings = Settings(clix_api_key=KEY, _env_file=None)
    monkeypatch.setattr(logs, "get_settings", lambda: settings)
    stream = Stream(tty=False)
    logger.addHandler(logging.StreamHandler(stream))
    configure(logger=logger)
    logger.info("key is %s", KEY)
    assert TEXT_LINE.match(stream.getvalue().splitlines()[0])
    assert KEY not in stream.getvalue()
    assert "key is [redacted]" in stream.getvalue()


def test_invalid_settings_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Settings:
        raise ConfigurationError("invalid settings: CLIX_LEASE_S ...")

    monkeypatch.setattr(logs, "get_settings", broken)
    monkeypatch.setenv("CLIX_LOG_FORMAT", "json")
    assert logs._from_settings() == ("json", "")
    monkeypatch.delenv("CLIX_LOG_FORMAT")
    assert logs._from_settings() == ("auto", "")


# --- masking the API key ----------------------------------------------------


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_the_key_is_masked_everywhere_in_a_record(
    logger: logging.Logger, formatter: logging.Formatter
) -> None:
    stream = attach(logger, formatter, secret=KEY)
    logger.info("header X-Clix-API-Key: %s", KEY)
    logger.info(f"inline {KEY} in the format string")
    log_event(logger, {**EVENT, "error": f"401 for key {KEY}"}, logging.WARNING)
    try:
        raise RuntimeError(f"client built with {KEY}")
    except RuntimeError:
        logger.exception("crash")
    logger.info("stack", stack_info=True)  # the test's source text names KEY, not its value
    output = stream.getvalue()
    assert KEY not in output
    assert "X-Clix-API-Key: [redacted]" in output
    assert "inline [redacted] in the format string" in output
    assert "401 for key [redacted]" in output
    assert "RuntimeError: client built with [redacted]" in output


def test_masking_leaves_other_records_and_the_callers_event_alone() -> None:
    mask = RedactSecret(KEY)
    event = {**EVENT, "error": f"with {KEY}"}
    clean = logging.makeLogRecord({"msg": "n=%d", "args": (3,), "clix": dict(EVENT)})
    dirty = logging.makeLogRecord({"msg": "n=%s", "args": (KEY,), "clix": event})
    assert mask.filter(clean) is True
    assert mask.filter(dirty) is True
    assert (clean.msg, clean.args, vars(clean)["clix"]) == ("n=%d", (3,), EVENT)
    assert dirty.getMessage() == "n=[redacted]"
    assert vars(dirty)["clix"]["error"] == "with [redacted]"
    assert vars(dirty)["clix"]["attempt"] == 2  # untouched values keep their type
    assert event["error"] == f"with {KEY}"  # the caller's dict is not rewritten


def test_the_filter_never_shows_the_key_itself() -> None:
    mask = RedactSecret(KEY)
    assert KEY not in repr(mask)
    assert KEY not in str(vars(mask).keys())


def test_an_empty_key_masks_nothing(logger: logging.Logger) -> None:
    stream = attach(logger, TextFormatter())
    logger.handlers[0].addFilter(RedactSecret(""))
    logger.info("nothing to hide")
    assert stream.getvalue().endswith("nothing to hide\n")


# --- Celery's signals -------------------------------------------------------


@pytest.fixture
def fake_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_from_settings", lambda: ("json", KEY))


@pytest.mark.usefixtures("fake_settings")
def test_after_setup_logger_swaps_the_formatters(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp_logger = logging.Logger(f"test.logs.mp.{uuid.uuid4().hex[:8]}")
    mp_stream = Stream(tty=True)
    mp_logger.addHandler(logging.StreamHandler(mp_stream))
    monkeypatch.setattr(logs, "get_multiprocessing_logger", lambda: mp_logger)
    stream = Stream(tty=True)
    celery_handler = logging.StreamHandler(stream)
    celery_handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s] %(message)s"))
    logger.addHandler(celery_handler)

    after_setup_logger.send(
        sender=None, logger=logger, loglevel=logging.INFO, logfile=None, format="", colorize=False
    )

    assert isinstance(celery_handler.formatter, JsonFormatter)
    assert any(isinstance(f, RedactSecret) for f in celery_handler.filters)
    assert isinstance(mp_logger.handlers[0].formatter, JsonFormatter)
    log_event(logger, {**EVENT, "error": KEY})
    line = json.loads(stream.getvalue())
    assert line["outcome"] == "sent"
    assert line["error"] == "[redacted]"


@pytest.mark.usefixtures("fake_settings")
def test_after_setup_task_logger_swaps_the_formatters(logger: logging.Logger) -> None:
    handler = logging.StreamHandler(Stream(tty=False))
    logger.addHandler(handler)
    after_setup_task_logger.send(
        sender=None, logger=logger, loglevel=logging.INFO, logfile=None, format="", colorize=False
    )
    assert isinstance(handler.formatter, JsonFormatter)
    assert handler.formatter.task is True


def test_an_unknown_format_setting_does_not_stop_the_worker(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(logs, "_from_settings", lambda: ("yaml", KEY))
    monkeypatch.setattr(logs, "get_multiprocessing_logger", lambda: None)
    terminal = Stream(tty=True)
    logger.addHandler(logging.StreamHandler(terminal))
    with caplog.at_level(logging.WARNING, logger="clix.worker"):
        logs._on_setup_logger(logger=logger)
    assert isinstance(logger.handlers[0].formatter, TextFormatter)  # auto, on a terminal
    assert "CLIX_LOG_FORMAT='yaml' is not one of auto, json, text" in caplog.text
    assert KEY not in caplog.text


def test_celery_s_success_line_is_left_out_unless_the_worker_logs_at_debug(
    logger: logging.Logger,
) -> None:
    stream = attach(logger, TextFormatter())
    logger.addFilter(DropCelerySuccessLine())
    success = {"name": "trigger_campaign", "runtime": 0.1, "return_value": {"trigger_id": "x"}}
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.INFO)
        logger.info(LOG_SUCCESS, {**success, "id": "t-1"})
        logger.info("Task trigger_campaign[%s] received", "t-1")
        logger.warning("Task trigger_campaign[%s] kept", "t-1")
        root.setLevel(logging.DEBUG)
        logger.info(LOG_SUCCESS, {**success, "id": "t-2"})
    finally:
        root.setLevel(level)

    text = stream.getvalue()
    assert "[t-1] succeeded" not in text
    assert "[t-1] received" in text
    assert "[t-1] kept" in text
    assert "[t-2] succeeded" in text  # at DEBUG everything Celery says is there


def test_after_setup_logger_drops_celery_s_success_line_once(logger: logging.Logger) -> None:
    trace = logging.getLogger("celery.app.trace")
    setup = {"loglevel": logging.INFO, "logfile": None, "format": "", "colorize": False}
    for _ in range(2):
        after_setup_logger.send(sender=None, logger=logger, **setup)

    assert sum(isinstance(f, DropCelerySuccessLine) for f in trace.filters) == 1
