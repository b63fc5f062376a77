"""A TCP proxy that cuts a service's connections on command: store faults fakeredis never shows.

Workers reach the store's Redis through it (``REDIS_URL`` names the proxy's
port) while the broker stays direct, so a test can drop the store at a chosen
moment, for example right after Clix accepted a trigger, and watch what the
worker does::

    with TcpProxy(redis_port).start() as proxy:
        ...
        proxy.cut(3.0)  # drop every connection now and refuse new ones for 3 s

It is plain threads and sockets: one accept loop, two pumps per connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port`` until told to cut."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._refuse_until = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        #: How many client connections were dropped by :meth:`cut` so far.
        self.connections_cut = 0

    def url(self, db: int = 0) -> str:
        """A ``redis://`` URL pointing at the proxy."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> TcpProxy:
        """Begin accepting connections."""
        self._thread.start()
        return self

    def cut(self, seconds: float) -> None:
        """Drop every live connection now and refuse new ones for ``seconds`` (returns at once)."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
            doomed = list(self._sockets)
            self._sockets.clear()
            self.connections_cut += len(doomed)
        for sock in doomed:
            _close(sock)

    @property
    def refusing(self) -> bool:
        """Whether a cut is in force now."""
        return time.monotonic() < self._refuse_until

    def stop(self) -> None:
        """Stop accepting and close every connection."""
        self._stopped.set()
        self.cut(0)
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refusing:
                _close(client)  # a refused connect, as a Redis that is away looks
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass  # cut, or the other side went away
        finally:
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    # shutdown first: a blocked recv() in the peer pump returns at once
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
