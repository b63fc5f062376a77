"""A bulk CLI operation (``dlq replay`` / ``purge`` of many entries): progress, clean stops.

Each item of a :class:`BulkRun` is one atomic operation (one DLQ entry
replayed or purged). Ctrl-C or SIGTERM while an item runs lets that item
finish, then stops before the next one, so an interruption never leaves an
item half done and a re-run picks up exactly what is left; a second Ctrl-C
stops at once (the operations are safe to re-run even then). A progress bar is
drawn on stderr when it is a terminal.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, TextIO

import click

__all__ = ["BulkRun"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BulkRun:
    """Iterate over ``items`` with a progress bar, stopping between items on a signal."""

    def __init__(self, items: Sequence[str], label: str, *, progress_file: TextIO | None = None):
        self.items = items
        self.label = label
        self.file = progress_file if progress_file is not None else sys.stderr
        self.done = 0
        self.interrupted = False

    @property
    def remaining(self) -> int:
        """Items not visited (after an interruption)."""
        return len(self.items) - self.done

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:
            raise KeyboardInterrupt  # asked twice: stop now
        self.interrupted = True

    def __iter__(self) -> Iterator[str]:
        previous: dict[int, Any] = {s: signal.signal(s, self._stop) for s in _STOP_SIGNALS}
        try:
            if self.file.isatty():
                with click.progressbar(
                    length=len(self.items), label=self.label, file=self.file
                ) as bar:
                    for item in self._visit():
                        yield item
                        bar.update(1)
            else:
                yield from self._visit()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _visit(self) -> Iterator[str]:
        for item in self.items:
            if self.interrupted:
                return
            yield item
            self.done += 1
