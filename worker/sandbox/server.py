"""The sandbox's asyncio server: connections, the request log, routing to Clix or control."""

from __future__ import annotations

import asyncio
import logging

from .clix_api import Record, answer_trigger
from .config import SandboxConfig
from .control import CONTROL_PREFIX, answer_control
from .faults import Faults
from .http11 import MAX_HEADER_BYTES, Answer, BadRequest, encode, error, linger, read_request

__all__ = ["MAX_RECORDS", "SandboxServer"]

MAX_RECORDS = 200_000
_log = logging.getLogger("worker.sandbox")


class SandboxServer:
    """The asyncio server: HTTP/1.1 with keep-alive, one task per connection.

    ``records`` holds every request outside the control API, oldest first (at most
    ``max_records``; the oldest go first): ``seq``, ``at``, ``method``, ``path``,
    ``campaign_id``, ``headers`` (lower-cased; ``x-clix-api-key`` reduced to
    ``<valid>``/``<invalid>``), ``body``, ``raw_body`` (only when not JSON), ``status``
    (None for a drop) and ``trigger_id``. ``seq`` keeps counting across a reset, so a
    client's ``since`` never skips new records.

    ``in_flight`` holds the records of requests that arrived and are not answered yet
    (``status`` None), e.g. during a scripted ``delay_ms``.

    Control API (JSON, no auth): ``GET /_sandbox/requests[?campaign_id=&since=]``,
    ``GET /_sandbox/stats[?campaign_id=]``, ``GET /_sandbox/in_flight[?campaign_id=]``,
    ``POST /_sandbox/script``,
    ``POST /_sandbox/config``, ``POST /_sandbox/reset``, ``GET /_sandbox/health``.
    Control requests are neither recorded nor delayed nor faulted.
    """

    max_records: int = MAX_RECORDS

    def __init__(self, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.records: list[Record] = []
        self.in_flight: dict[int, Record] = {}  # arrived, not answered yet (see answer_trigger)
        self.connections_total = 0  # lets tests prove keep-alive reuse
        self.faults = Faults(config)
        self._seq = 0
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
            self._connection, self.host, self.port, limit=MAX_HEADER_BYTES
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

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_total += 1
        try:
            while True:
                try:
                    request = await read_request(reader, writer)
                except BadRequest as exc:
                    writer.write(encode(*error(exc.status, str(exc)), keep_alive=False))
                    await linger(reader, writer)
                    break
                if request is None:
                    break
                try:
                    if request.path.startswith(CONTROL_PREFIX):
                        answer: Answer | None = answer_control(self, request)
                    else:
                        answer, record = await answer_trigger(
                            request, self.faults, self.config.api_key, self.in_flight
                        )
                        self._record(record)
                except Exception:  # noqa: BLE001 - a sandbox bug must not look like a Clix drop
                    _log.exception("clix sandbox: error answering %s", request.path)
                    answer, request.keep_alive = error(500, "sandbox internal error"), False
                if answer is None:
                    break  # scripted or random drop: close without a byte
                writer.write(encode(*answer, keep_alive=request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the server is stopping
        finally:
            writer.close()
            self._tasks.discard(task)

    def _record(self, record: Record) -> None:
        if len(self.records) >= self.max_records:
            # Trim in batches: deleting one entry per request would memmove the whole list.
            del self.records[: len(self.records) - self.max_records + 1 + self.max_records // 100]
        self._seq += 1
        record["seq"] = self._seq
        self.records.append(record)
