"""The control API under ``/_sandbox/``: what tests use to inspect and steer the sandbox.

JSON, no auth: ``GET requests[?campaign_id=&since=]``, ``GET stats[?campaign_id=]``,
``GET in_flight[?campaign_id=]`` (arrived, not answered yet), ``POST script``,
``POST config``, ``POST reset``, ``GET health``. Control requests are neither
recorded nor delayed nor faulted.
"""

from __future__ import annotations

import bisect
import collections
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .config import LIVE_FIELDS
from .faults import script_problem
from .http11 import Answer, Request, error

if TYPE_CHECKING:
    from .server import SandboxServer

__all__ = ["CONTROL_PREFIX", "answer_control"]

CONTROL_PREFIX = "/_sandbox/"
_ROUTES = {
    "requests": "GET",
    "stats": "GET",
    "health": "GET",
    "in_flight": "GET",
    "script": "POST",
    "config": "POST",
    "reset": "POST",
}


def answer_control(server: SandboxServer, request: Request) -> Answer:
    """Answer one control request against ``server``'s records and faults."""
    name = request.path[len(CONTROL_PREFIX) :]
    query = {k: v[-1] for k, v in parse_qs(request.query).items()}
    if name not in _ROUTES:
        return error(404)
    if request.method != _ROUTES[name]:
        return 405, {"error": "method not allowed"}, {"Allow": _ROUTES[name]}
    if name == "health":
        return 200, {"ok": True}, {}
    if name == "in_flight":
        held = sorted(server.in_flight.values(), key=lambda r: r["at"])
        if "campaign_id" in query:
            held = [r for r in held if r["campaign_id"] == query["campaign_id"]]
        return 200, {"in_flight": held}, {}
    if name in ("requests", "stats"):
        records = server.records
        if "since" in query:
            if not (query["since"].isascii() and query["since"].isdigit()):
                return error(400, "since must be a sequence number")
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
        return error(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        return error(400, "request body must be a JSON object")
    if name == "script":
        return _add_script(server, data)
    if name == "config":
        return _update_config(server, data)
    server.records.clear()
    server.faults.reset()
    return 200, {"ok": True, "config": server.config.public()}, {}


def _add_script(server: SandboxServer, data: dict[str, Any]) -> Answer:
    campaign_id, responses = data.get("campaign_id"), data.get("responses")
    if not isinstance(campaign_id, str) or not isinstance(responses, list):
        return error(400, "script needs campaign_id (string) and responses (array)")
    for entry in responses:
        problem = script_problem(entry)
        if problem:
            return error(400, problem)
    server.faults.queue_script(campaign_id, responses)
    return 200, {"queued": len(responses)}, {}


def _update_config(server: SandboxServer, data: dict[str, Any]) -> Answer:
    refused = sorted(set(data) - LIVE_FIELDS)
    if refused:
        return error(400, f"cannot change: {', '.join(refused)}")
    try:
        server.faults.apply(replace(server.config, **data))
    except (TypeError, ValueError) as exc:
        return error(400, str(exc))
    return 200, server.config.public(), {}
