"""The sandbox's HTTP/1.1: keep-alive, Content-Length bodies, answers always JSON.

Benchmarks push ~1,500 requests/s through the sandbox, so this is a few
hand-written lines on asyncio streams rather than a framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from http import HTTPStatus
from sys import intern
from typing import Any

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "Answer",
    "BadRequest",
    "Request",
    "encode",
    "error",
    "linger",
    "read_request",
]

MAX_BODY_BYTES = 10 * 1024 * 1024  # Clix's documented request limit
MAX_HEADER_BYTES = 64 * 1024
_MAX_DISCARD_BYTES = 64 * 1024 * 1024  # oversized bodies up to this are read and dropped
_REASONS = {s.value: s.phrase for s in HTTPStatus}

Answer = tuple[int, Any, dict[str, str]]  # status, JSON payload, extra headers

# Built once: json.dumps with options constructs a fresh encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class BadRequest(Exception):
    """A request whose framing is broken: answered, then the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    """One parsed request: method, path and query, lower-cased headers, body."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "too_large")

    def __init__(self, method: str, target: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers = headers
        self.body = b""
        self.too_large = False
        self.keep_alive = "close" not in headers.get("connection", "").lower()


def error(status: int, message: str | None = None) -> Answer:
    """A JSON error answer: ``{"error": message}`` (the reason phrase by default)."""
    return status, {"error": message or _REASONS.get(status, "error").lower()}, {}


def encode(status: int, payload: Any, headers: dict[str, str], keep_alive: bool) -> bytes:
    """The bytes of one HTTP/1.1 response with a JSON body."""
    body = _ENCODER.encode(payload).encode()
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    for name, value in headers.items():
        head += f"{name}: {value}\r\n"
    # Always explicit: HTTP/1.0 keep-alive clients (ab -k) wait for close without it.
    head += "Connection: keep-alive\r\n" if keep_alive else "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + body


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then swallow what the client still sends (briefly).

    Closing a socket with unread input makes the kernel send RST, which can destroy
    the error answer before the client reads it.
    """
    writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(0.5):
            while await reader.read(1 << 16):
                pass


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """Read one request; None on a clean close between requests, :class:`BadRequest` if broken."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # clean close between requests
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request headers too large") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "malformed header line")
        # Interned: records keep up to 200,000 header dicts of mostly repeated strings.
        headers[intern(name.strip().lower())] = intern(value.strip())
    request = Request(parts[0], parts[1], headers)
    if parts[2] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
        request.keep_alive = False
    if "transfer-encoding" in headers:  # Clix clients send Content-Length; keep this tiny
        raise BadRequest(411, "Content-Length required")
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit()):
        raise BadRequest(400, "invalid Content-Length")
    size = int(length)
    if size and size <= _MAX_DISCARD_BYTES and "100-continue" in headers.get("expect", "").lower():
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
