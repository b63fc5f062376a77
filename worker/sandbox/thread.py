"""The sandbox in a background thread, for tests and benchmarks in one process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

from .config import SandboxConfig
from .server import SandboxServer

__all__ = ["SandboxThread", "run_in_thread"]


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
