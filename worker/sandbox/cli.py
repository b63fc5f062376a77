"""``clix-worker sandbox`` (and ``python -m worker.sandbox``): serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from dataclasses import fields

from .config import FAULT_FIELDS, SandboxConfig
from .server import SandboxServer

__all__ = ["main"]

_DESCRIPTION = "A local, Clix-compatible HTTP server for tests, demos and benchmarks."


def _describe(config: SandboxConfig) -> str:
    faults = [f"{name}={getattr(config, name):g}" for name in FAULT_FIELDS if getattr(config, name)]
    return f"project {config.project_id}, faults: {', '.join(faults) or 'none'}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clix-worker sandbox", description=_DESCRIPTION)
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
