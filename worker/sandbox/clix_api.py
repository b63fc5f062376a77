"""The Clix surface: ``POST /api/v1/campaigns/{campaign_id}:trigger`` and its rules.

It checks what Clix checks (auth headers, campaign id, Content-Type, the body's
shape, the 10 MB limit), answers ``200 {"trigger_id": ...}`` when all is well,
and lets :class:`~worker.sandbox.faults.Faults` misbehave first.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import unquote

from .faults import Faults
from .http11 import Answer, Request, error

__all__ = ["ROUTE_PREFIX", "ROUTE_SUFFIX", "Record", "answer_trigger", "validate_trigger"]

ROUTE_PREFIX = "/api/v1/campaigns/"
ROUTE_SUFFIX = ":trigger"
_MAX_RAW_BODY_CHARS = 64 * 1024  # invalid bodies are kept for debugging, but bounded
_UNSAFE_ID_CHARS = frozenset("/?#")

Record = dict[str, Any]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")  # NaN/Infinity: Python accepts them, JSON doesn't


# Built once: json.loads with options constructs a fresh decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def validate_trigger(data: Any) -> str | None:
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


def campaign_id_of(path: str) -> str | None:
    """The decoded campaign id if ``path`` is the trigger route (one segment), else None."""
    if not (path.startswith(ROUTE_PREFIX) and path.endswith(ROUTE_SUFFIX)):
        return None
    raw = path[len(ROUTE_PREFIX) : -len(ROUTE_SUFFIX)]
    return None if "/" in raw else unquote(raw)


def _bad_campaign_id(campaign_id: str) -> bool:
    return not campaign_id or any(
        c in _UNSAFE_ID_CHARS or c.isspace() or not c.isprintable() for c in campaign_id
    )


async def answer_trigger(
    request: Request, faults: Faults, api_key: str, in_flight: dict[int, Record]
) -> tuple[Answer | None, Record]:
    """Answer a request outside the control API (``None``: drop it) and describe it for the log.

    The record has every field of a sandbox record but ``seq``. While the answer is
    being decided (latency, scripted delays) the record sits in ``in_flight`` with
    ``status`` None, so a test can act at the moment Clix holds a request.
    """
    arrived = time.time()
    headers = request.headers
    campaign_id = campaign_id_of(request.path)
    key_ok = hmac.compare_digest(
        headers.get("x-clix-api-key", "").encode("latin-1"), api_key.encode()
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
    record: Record = {
        "at": arrived,
        "method": request.method,
        "path": request.path,
        "campaign_id": campaign_id,
        "headers": headers,
        "body": body,
        "raw_body": raw_body,
        "status": None,
        "trigger_id": None,
    }
    in_flight[id(record)] = record
    try:
        if faults.config.latency_ms > 0:
            await asyncio.sleep(faults.config.latency_ms / 1000)
        answer = await _decide(request, faults, campaign_id, key_ok, body, parse_error)
    finally:
        del in_flight[id(record)]
    payload = answer[1] if answer and answer[0] == 200 else None
    trigger_id = payload.get("trigger_id") if isinstance(payload, dict) else None
    record["status"] = answer[0] if answer else None
    record["trigger_id"] = trigger_id if isinstance(trigger_id, str) else None
    return answer, record


async def _decide(
    request: Request,
    faults: Faults,
    campaign_id: str | None,
    key_ok: bool,
    body: Any,
    parse_error: str | None,
) -> Answer | None:
    config = faults.config
    entry = (
        faults.pop_script(campaign_id)
        if campaign_id is not None and request.method == "POST"
        else None
    )
    if entry is not None:
        return await faults.scripted(entry)
    hit, fault = faults.random_fault()
    if hit:
        return fault
    limit_headers: dict[str, str] = {}
    if faults.bucket is not None:
        ok, limit_headers = faults.bucket.take()
        if not ok:
            return 429, {"error": "rate limited"}, limit_headers
    project_ok = hmac.compare_digest(
        request.headers.get("x-clix-project-id", "").encode("latin-1"),
        config.project_id.encode(),
    )
    if not (key_ok and project_ok) or config.revoke_key:
        return error(401)
    if campaign_id is None:
        return error(404)
    if request.method != "POST":
        return 405, {"error": "method not allowed"}, {"Allow": "POST"}
    if _bad_campaign_id(campaign_id):
        return error(400, "invalid campaign id")
    if request.too_large:
        return error(413, "request body exceeds 10 MB")
    if request.body:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return error(400, "Content-Type must be application/json")
        problem = parse_error or validate_trigger(body)
        if problem:
            return error(400, problem)
    return 200, {"trigger_id": str(uuid.uuid4())}, limit_headers
