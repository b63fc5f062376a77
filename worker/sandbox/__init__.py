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

One module per concept:

==============  ===============================================================
``http11``      HTTP/1.1 framing: parse a request, encode a JSON answer
``clix_api``    the trigger endpoint and Clix's validation rules
``faults``      random faults, the token bucket, scripted answers
``config``      :class:`SandboxConfig`: credentials and fault settings
``control``     the ``/_sandbox/`` control API
``server``      :class:`SandboxServer`: connections and the request log
``thread``      :class:`SandboxThread` / :func:`run_in_thread`
``cli``         :func:`main`, behind ``clix-worker sandbox``
==============  ===============================================================

Run it with ``clix-worker sandbox --port 8787`` (or ``python -m worker sandbox``).
"""

from __future__ import annotations

from .cli import main
from .config import SandboxConfig
from .http11 import MAX_BODY_BYTES
from .server import MAX_RECORDS, SandboxServer
from .thread import SandboxThread, run_in_thread

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_RECORDS",
    "SandboxConfig",
    "SandboxServer",
    "SandboxThread",
    "main",
    "run_in_thread",
]
