"""A local, Clix-compatible HTTP server for tests, demos and benchmarks.

It answers ``POST /api/v1/campaigns/{campaign_id}:trigger`` the way Clix does
(auth headers, body validation, ``200 {"trigger_id": ...}``) and can be told to
misbehave: random drops, 429s and 503s, added latency, a Clix-like token-bucket
rate limit, and per-campaign scripted answers. Every trigger request is recorded
(with the API key masked) so tests can assert exactly what the worker sent.
A small control API under ``/_sandbox/`` drives it over HTTP; see :class:`SandboxServer`.

It is pure stdlib on purpose: benchmarks push ~1,500 requests/s through it, so
the HTTP/1.1 handling (keep-alive, Content-Length bodies) is a few
hand-written lines on asyncio streams rather than a framework.

Run it with ``clix-worker sandbox --port 8787`` (or ``python -m worker sandbox``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import hmac
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from http import HTTPStatus
from sys import intern
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

__all__ = ["SandboxConfig", "SandboxServer", "SandboxThread", "main", "run_in_thread"]

ROUTE_PREFIX = "/api/v1/campaigns/"
ROUTE_SUFFIX = ":trigger"
CONTROL_PREFIX = "/_sandbox/"
MAX_BODY_BYTES = 10 * 1024 * 1024  # Clix's documented request limit
MAX_RECORDS = 200_000
_MAX_HEADER_BYTES = 64 * 1024
_MAX_DISCARD_BYTES = 64 * 1024 * 1024  # oversized bodies up to this are read and dropped
_MAX_RAW_BODY_CHARS = 64 * 1024  # invalid bodies are kept for debugging, but bounded
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_UNSAFE_ID_CHARS = frozenset("/?#")
_FAULT_FIELDS = ("fail_rate", "drop_rate", "rate_429", "latency_ms", "rate_limit_per_s")
_LIVE_FIELDS = frozenset(_FAULT_FIELDS) | {"retry_after_s", "seed", "revoke_key"}
_log = logging.getLogger(__name__)

Record = dict[str, Any]
Answer = tuple[int, Any, dict[str, str]]  # status, JSON payload, extra headers


@dataclass
class SandboxConfig:
    """Credentials the sandbox accepts and the faults it injects.

    The three shares (drop, 429, 503) come from one random draw per request, so each
    is exactly its share of requests. ``latency_ms`` delays every trigger request,
    scripted ones too (a script's ``delay_ms`` adds to it); the control API is never
    delayed. ``seed`` makes the fault sequence reproducible.
    """

    project_id: str = "sandbox-project"
    api_key: str = field(default="sandbox-key", repr=False)  # repr=False: never shown
    fail_rate: float = 0.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_s: int = 1
    rate_limit_per_s: float = 0.0
    seed: int | None = None
    revoke_key: bool = False  # answer 401 to every trigger, as if the key were revoked

    def __post_init__(self) -> None:
        # Values also arrive as JSON from the control API, so check types, not just ranges.
        for name in _FAULT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            if name not in ("latency_ms", "rate_limit_per_s") and value > 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if isinstance(self.retry_after_s, bool) or not isinstance(self.retry_after_s, int):
            raise ValueError("retry_after_s must be an integer")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError("seed must be an integer or null")
        if not isinstance(self.revoke_key, bool):
            raise ValueError("revoke_key must be a boolean")
        if not isinstance(self.project_id, str) or not isinstance(self.api_key, str):
            raise ValueError("project_id and api_key must be strings")

    def public(self) -> dict[str, Any]:
        """The configuration as JSON-ready data, without the API key."""
        data = asdict(self)
        del data["api_key"]
        return data


class _BadRequest(Exception):
    """A request whose framing is broken: answered, then the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "too_large")

    def __init__(self, method: str, target: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers = headers
        self.body = b""
        self.too_large = False
        self.keep_alive = "close" not in headers.get("connection", "").lower()


class _TokenBucket:
    """Clix's limiter: ``rate`` tokens/s, burst ``max(rate, 1)``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> tuple[bool, dict[str, str]]:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        ok = self.tokens >= 1.0
        if ok:
            self.tokens -= 1.0
        full_in = (self.capacity - self.tokens) / self.rate
        headers = {
            "X-RateLimit-Limit": f"{self.rate:g}",
            "X-RateLimit-Remaining": str(int(self.tokens)),
            "X-RateLimit-Reset": str(math.ceil(time.time() + full_in)),
        }
        if not ok:
            headers["Retry-After"] = str(max(1, math.ceil((1.0 - self.tokens) / self.rate)))
        return ok, headers


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")  # NaN/Infinity: Python accepts them, JSON doesn't


# Built once: json.loads/dumps with options construct a fresh coder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _error(status: int, message: str | None = None) -> Answer:
    return status, {"error": message or _REASONS.get(status, "error").lower()}, {}


def _encode(status: int, payload: Any, headers: dict[str, str], keep_alive: bool) -> bytes:
    body = _ENCODER.encode(payload).encode()
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    for name, value in headers.items():
        head += f"{name}: {value}\r\n"
    # Always explicit: HTTP/1.0 keep-alive clients (ab -k) wait for close without it.
    head += "Connection: keep-alive\r\n" if keep_alive else "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + body


def _validate_trigger(data: Any) -> str | None:
    """Clix's body rules; returns the first problem, or None when the body is acceptable."""
    if not isinstance(data, dict):
        return "request body must be a JSON object"
    unknown = sorted(set(data) - {"audience", "properties"})
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    if "audience" in data:
        audience = data["audience"]
        if not isinstance(audience, dict):
            return "audience must be an object"
        if set(audience) - {"broadcast", "targets"}:
            return "audience accepts only broadcast and targets"
        if "broadcast" in audience and not isinstance(audience["broadcast"], bool):
            return "audience.broadcast must be a boolean"
        targets = audience.get("targets", [])
        if not isinstance(targets, list):
            return "audience.targets must be an array"
        for i, target in enumerate(targets):
            if not isinstance(target, dict) or len(target) != 1:
                return f"audience.targets[{i}] must name exactly one of project_user_id, device_id"
            ((key, value),) = target.items()
            if (
                key not in ("project_user_id", "device_id")
                or not isinstance(value, str)
                or not value
            ):
                return f"audience.targets[{i}] needs a non-empty project_user_id or device_id"
    if "properties" in data and not isinstance(data["properties"], dict):
        return "properties must be an object"
    return None


def _campaign_id(path: str) -> str | None:
    """The decoded campaign id if ``path`` is the trigger route (one segment), else None."""
    if not (path.startswith(ROUTE_PREFIX) and path.endswith(ROUTE_SUFFIX)):
        return None
    raw = path[len(ROUTE_PREFIX) : -len(ROUTE_SUFFIX)]
    return None if "/" in raw else unquote(raw)


def _bad_campaign_id(campaign_id: str) -> bool:
    return not campaign_id or any(
        c in _UNSAFE_ID_CHARS or c.isspace() or not c.isprintable() for c in campaign_id
    )


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then swallow what the client still sends (briefly).

    Closing a socket with unread input makes the kernel send RST, which can destroy
    the error answer before the client reads it.
    """
    writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(0.5):
            while await reader.read(1 << 16):
                pass


class SandboxServer:
    """The asyncio server: HTTP/1.1 with keep-alive, one task per connection.

    ``records`` holds every request outside the control API, oldest first (at most
    ``max_records``; the oldest go first): ``seq``, ``at``, ``method``, ``path``,
    ``campaign_id``, ``headers`` (lower-cased; ``x-clix-api-key`` reduced to
    ``<valid>``/``<invalid>``), ``body``, ``raw_body`` (only when not JSON), ``status``
    (None for a drop) and ``trigger_id``. ``seq`` keeps counting across a reset, so a
    client's ``since`` never skips new records.

    Control API (JSON, no auth): ``GET /_sandbox/requests[?campaign_id=&since=]``,
    ``GET /_sandbox/stats[?campaign_id=]``, ``POST /_sandbox/script``,
    ``POST /_sandbox/config``, ``POST /_sandbox/reset``, ``GET /_sandbox/health``.
    Control requests are neither recorded nor delayed nor faulted.
    """

    max_records: int = MAX_RECORDS

    def __init__(self, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.records: list[Record] = []
        self.connections_total = 0  # lets tests prove keep-alive reuse
        self._initial = replace(config)
        self._seq = 0
        self._scripts: dict[str, collections.deque[dict[str, Any]]] = {}
        self._rng = random.Random(config.seed)
        self._bucket = _TokenBucket(config.rate_limit_per_s) if config.rate_limit_per_s else None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()

    @property
    def requests_seen(self) -> int:
        """Trigger-surface requests since start (unlike ``records``, never trimmed or reset)."""
        return self._seq

    @property
    def url(self) -> str:
        """Base URL to hand to a Clix client, e.g. ``http://127.0.0.1:8787``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting; afterwards ``self.port`` is the real port."""
        self._stopped.clear()
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, limit=_MAX_HEADER_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        """Serve until :meth:`stop` is called (starting first if needed)."""
        if self._server is None:
            await self.start()
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        self._stopped.set()

    # -- HTTP/1.1 framing -------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_total += 1
        try:
            while True:
                try:
                    request = await self._read_request(reader, writer)
                except _BadRequest as exc:
                    writer.write(_encode(*_error(exc.status, str(exc)), keep_alive=False))
                    await _linger(reader, writer)
                    break
                if request is None:
                    break
                try:
                    if request.path.startswith(CONTROL_PREFIX):
                        answer: Answer | None = self._control(request)
                    else:
                        answer = await self._trigger(request)
                except Exception:  # noqa: BLE001 - a sandbox bug must not look like a Clix drop
                    _log.exception("clix sandbox: error answering %s", request.path)
                    answer, request.keep_alive = _error(500, "sandbox internal error"), False
                if answer is None:
                    break  # scripted or random drop: close without a byte
                writer.write(_encode(*answer, keep_alive=request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the server is stopping
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # clean close between requests
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request headers too large") from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header line")
            # Interned: records keep up to 200,000 header dicts of mostly repeated strings.
            headers[intern(name.strip().lower())] = intern(value.strip())
        request = _Request(parts[0], parts[1], headers)
        if parts[2] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
            request.keep_alive = False
        if "transfer-encoding" in headers:  # Clix clients send Content-Length; keep this tiny
            raise _BadRequest(411, "Content-Length required")
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()):
            raise _BadRequest(400, "invalid Content-Length")
        size = int(length)
        if (
            size
            and size <= _MAX_DISCARD_BYTES
            and "100-continue" in headers.get("expect", "").lower()
        ):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits 1 s for this otherwise
        if size > MAX_BODY_BYTES:
            request.too_large = True
            if size > _MAX_DISCARD_BYTES:
                request.keep_alive = False  # not worth reading: answer and hang up
            else:  # read and drop it so the client sees the 413 instead of a broken pipe
                while size > 0:
                    size -= len(await reader.readexactly(min(size, 1 << 16)))
        elif size:
            request.body = await reader.readexactly(size)
        return request

    # -- the Clix surface ---------------------------------------------------------------------

    async def _trigger(self, request: _Request) -> Answer | None:
        arrived = time.time()
        headers = request.headers
        campaign_id = _campaign_id(request.path)
        key_ok = hmac.compare_digest(
            headers.get("x-clix-api-key", "").encode("latin-1"), self.config.api_key.encode()
        )
        if "x-clix-api-key" in headers:  # mask before anything can keep a reference to it
            headers["x-clix-api-key"] = "<valid>" if key_ok else "<invalid>"
        body: Any = None
        raw_body: str | None = None
        parse_error: str | None = None
        if request.body:
            try:
                body = _DECODER.decode(request.body.decode())  # JSON is UTF-8 (RFC 8259)
            except ValueError:  # includes UnicodeDecodeError
                parse_error = "request body is not valid JSON"
                raw_body = request.body[:_MAX_RAW_BODY_CHARS].decode("utf-8", errors="replace")
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)
        answer = await self._decide(request, campaign_id, key_ok, body, parse_error)
        payload = answer[1] if answer and answer[0] == 200 else None
        trigger_id = payload.get("trigger_id") if isinstance(payload, dict) else None
        self._record(
            {
                "at": arrived,
                "method": request.method,
                "path": request.path,
                "campaign_id": campaign_id,
                "headers": headers,
                "body": body,
                "raw_body": raw_body,
                "status": answer[0] if answer else None,
                "trigger_id": trigger_id if isinstance(trigger_id, str) else None,
            }
        )
        return answer

    async def _decide(
        self,
        request: _Request,
        campaign_id: str | None,
        key_ok: bool,
        body: Any,
        parse_error: str | None,
    ) -> Answer | None:
        config = self.config
        script = self._scripts.get(campaign_id) if campaign_id is not None else None
        if script and request.method == "POST":
            return await self._scripted(script.popleft())
        faults = config.drop_rate + config.rate_429 + config.fail_rate
        if faults:  # one draw, so each rate is exactly its share of requests
            draw = self._rng.random()
            if draw < config.drop_rate:
                return None
            if draw < config.drop_rate + config.rate_429:
                return 429, {"error": "rate limited"}, {"Retry-After": str(config.retry_after_s)}
            if draw < faults:
                return _error(503)
        limit_headers: dict[str, str] = {}
        if self._bucket is not None:
            ok, limit_headers = self._bucket.take()
            if not ok:
                return 429, {"error": "rate limited"}, limit_headers
        project_ok = hmac.compare_digest(
            request.headers.get("x-clix-project-id", "").encode("latin-1"),
            config.project_id.encode(),
        )
        if not (key_ok and project_ok) or config.revoke_key:
            return _error(401)
        if campaign_id is None:
            return _error(404)
        if request.method != "POST":
            return 405, {"error": "method not allowed"}, {"Allow": "POST"}
        if _bad_campaign_id(campaign_id):
            return _error(400, "invalid campaign id")
        if request.too_large:
            return _error(413, "request body exceeds 10 MB")
        if request.body:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                return _error(400, "Content-Type must be application/json")
            problem = parse_error or _validate_trigger(body)
            if problem:
                return _error(400, problem)
        return 200, {"trigger_id": str(uuid.uuid4())}, limit_headers

    async def _scripted(self, entry: dict[str, Any]) -> Answer | None:
        if entry.get("delay_ms"):
            await asyncio.sleep(entry["delay_ms"] / 1000)
        if entry.get("action") == "drop":
            return None
        status: int = entry.get("status", 200)
        headers = dict(entry.get("headers", {}))
        if status == 429 and not any(k.lower() == "retry-after" for k in headers):
            headers["Retry-After"] = str(self.config.retry_after_s)
        if "body" in entry:
            return status, entry["body"], headers
        if status == 200:
            return 200, {"trigger_id": str(uuid.uuid4())}, headers
        return status, _error(status)[1], headers

    def _record(self, record: Record) -> None:
        if len(self.records) >= self.max_records:
            # Trim in batches: deleting one entry per request would memmove the whole list.
            del self.records[: len(self.records) - self.max_records + 1 + self.max_records // 100]
        self._seq += 1
        record["seq"] = self._seq
        self.records.append(record)

    # -- control API --------------------------------------------------------------------------

    def _control(self, request: _Request) -> Answer:
        name = request.path[len(CONTROL_PREFIX) :]
        query = {k: v[-1] for k, v in parse_qs(request.query).items()}
        routes = {"requests": "GET", "stats": "GET", "health": "GET"}
        routes.update(script="POST", config="POST", reset="POST")
        if name not in routes:
            return _error(404)
        if request.method != routes[name]:
            return 405, {"error": "method not allowed"}, {"Allow": routes[name]}
        if name == "health":
            return 200, {"ok": True}, {}
        if name in ("requests", "stats"):
            records = self.records
            if "since" in query:
                if not (query["since"].isascii() and query["since"].isdigit()):
                    return _error(400, "since must be a sequence number")
                start = bisect.bisect_right(records, int(query["since"]), key=lambda r: r["seq"])
                records = records[start:]
            if "campaign_id" in query:
                records = [r for r in records if r["campaign_id"] == query["campaign_id"]]
            if name == "requests":
                return 200, {"requests": records}, {}
            by_status = collections.Counter(str(r["status"]) for r in records if r["status"])
            dropped = sum(1 for r in records if r["status"] is None)
            return 200, {"total": len(records), "by_status": by_status, "dropped": dropped}, {}
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(data, dict):
            return _error(400, "request body must be a JSON object")
        if name == "script":
            return self._add_script(data)
        if name == "config":
            return self._update_config(data)
        self.records.clear()
        self._scripts.clear()
        self._apply(replace(self._initial), fresh=True)
        return 200, {"ok": True, "config": self.config.public()}, {}

    def _add_script(self, data: dict[str, Any]) -> Answer:
        campaign_id, responses = data.get("campaign_id"), data.get("responses")
        if not isinstance(campaign_id, str) or not isinstance(responses, list):
            return _error(400, "script needs campaign_id (string) and responses (array)")
        for entry in responses:
            problem = _script_problem(entry)
            if problem:
                return _error(400, problem)
        self._scripts.setdefault(campaign_id, collections.deque()).extend(responses)
        return 200, {"queued": len(responses)}, {}

    def _update_config(self, data: dict[str, Any]) -> Answer:
        refused = sorted(set(data) - _LIVE_FIELDS)
        if refused:
            return _error(400, f"cannot change: {', '.join(refused)}")
        try:
            self._apply(replace(self.config, **data))
        except (TypeError, ValueError) as exc:
            return _error(400, str(exc))
        return 200, self.config.public(), {}

    def _apply(self, new: SandboxConfig, fresh: bool = False) -> None:
        """Copy ``new`` into the live config (in place, so holders of it see the change).

        The bucket and the fault RNG restart only when their settings change (or on
        reset), so toggling fail_rate mid-test does not refill the rate limit.
        """
        old = replace(self.config)
        for f in fields(SandboxConfig):
            setattr(self.config, f.name, getattr(new, f.name))
        if fresh or new.rate_limit_per_s != old.rate_limit_per_s:
            rate = new.rate_limit_per_s
            self._bucket = _TokenBucket(rate) if rate else None
        if fresh or new.seed != old.seed:
            self._rng = random.Random(new.seed)


def _script_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "each response must be an object"
    if entry.get("action", "drop") != "drop":
        return "the only action is drop"
    status = entry.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        return "status must be an HTTP status code"
    delay = entry.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        return "delay_ms must be a non-negative number"
    headers = entry.get("headers", {})
    if not isinstance(headers, dict):
        return "headers must be an object"
    for name, value in headers.items():
        text = f"{name}{value}" if isinstance(value, str) else "\n"
        if "\r" in text or "\n" in text or ":" in name or not text.isascii():
            return f"invalid header {name!r}"
        if name.lower() in ("content-length", "content-type", "connection", "transfer-encoding"):
            return f"header {name} is set by the sandbox"
    return None


class SandboxThread:
    """A :class:`SandboxServer` on its own event loop in a daemon thread (a context manager)."""

    def __init__(self, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = SandboxServer(config, host, port)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="clix-sandbox", daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return self.server.url

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    def start(self) -> SandboxThread:
        """Start the thread and wait until the server listens (re-raising a bind error)."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("clix sandbox did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and join the thread; safe to call twice."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> SandboxThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised by start() in the caller
            self._error = exc
            return
        finally:
            self._ready.set()
        await self._stop.wait()
        await self.server.stop()


def run_in_thread(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> SandboxThread:
    """Start a sandbox in a background thread; returns once it accepts connections."""
    return SandboxThread(config, host, port).start()


def _describe(config: SandboxConfig) -> str:
    faults = [
        f"{name}={getattr(config, name):g}" for name in _FAULT_FIELDS if getattr(config, name)
    ]
    return f"project {config.project_id}, faults: {', '.join(faults) or 'none'}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clix-worker sandbox", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787, help="0 picks a free port (default 8787)")
    p.add_argument("--project-id", default="sandbox-project")
    p.add_argument(
        "--api-key",
        default=os.environ.get("CLIX_SANDBOX_API_KEY", "sandbox-key"),
        help="key to accept (prefer the CLIX_SANDBOX_API_KEY variable: argv is visible in ps)",
    )
    p.add_argument("--fail-rate", type=float, default=0.0, help="share answered 503")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share closed without answer")
    p.add_argument("--rate-429", type=float, default=0.0, help="share answered 429")
    p.add_argument("--retry-after", dest="retry_after_s", type=int, default=1, help="of 429s")
    p.add_argument("--rate-limit", dest="rate_limit_per_s", type=float, default=0.0, help="req/s")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible faults")
    p.add_argument(
        "--revoke-key", action="store_true", help="answer 401 to every trigger (key revoked)"
    )
    p.add_argument("--quiet", action="store_true", help="print only the listening line")
    return p


async def _serve(server: SandboxServer, quiet: bool) -> int:
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"clix sandbox listening on {server.url} ({_describe(server.config)})", flush=True)
    if not quiet and server.host not in ("127.0.0.1", "localhost", "::1"):
        print("clix sandbox: warning: the /_sandbox/ control API has no auth", file=sys.stderr)
    await stop.wait()
    await server.stop()
    if not quiet:
        print(f"clix sandbox stopped after {server.requests_seen} requests", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: serve until SIGINT/SIGTERM; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:  # argparse dests are the SandboxConfig field names
        config = SandboxConfig(**{f.name: getattr(args, f.name) for f in fields(SandboxConfig)})
    except ValueError as exc:
        parser.error(str(exc))  # exits 2: bad usage
    try:
        return asyncio.run(_serve(SandboxServer(config, args.host, args.port), args.quiet))
    except OSError as exc:
        print(f"clix sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
