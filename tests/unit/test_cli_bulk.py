"""Bulk CLI operations stop between items when interrupted, never inside one."""

from __future__ import annotations

import io
import os
import signal

import pytest

from worker.cli.bulk import BulkRun


def test_a_run_visits_every_item_in_order() -> None:
    run = BulkRun(["a", "b", "c"], "replaying", progress_file=io.StringIO())
    assert list(run) == ["a", "b", "c"]
    assert (run.done, run.interrupted) == (3, False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_an_item_lets_it_finish_and_stops_before_the_next(signum: int) -> None:
    finished: list[str] = []
    run = BulkRun(["a", "b", "c", "d"], "purging", progress_file=io.StringIO())
    for item in run:
        if item == "b":
            os.kill(os.getpid(), signum)  # arrives in the middle of item b
        finished.append(item)  # the item's work completes
    assert finished == ["a", "b"]
    assert (run.done, run.interrupted) == (2, True)
    assert run.remaining == 2


def test_the_signal_handlers_are_restored_afterwards() -> None:
    before = signal.getsignal(signal.SIGINT)
    run = BulkRun(["a"], "x", progress_file=io.StringIO())
    for _ in run:
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def interrupt_twice(run: BulkRun) -> None:
    for _ in run:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_a_second_interrupt_stops_at_once() -> None:
    run = BulkRun(["a", "b"], "x", progress_file=io.StringIO())
    with pytest.raises(KeyboardInterrupt):
        interrupt_twice(run)
    assert run.done == 0


def test_progress_is_drawn_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    list(BulkRun(["a", "b"], "replaying", progress_file=quiet))
    assert quiet.getvalue() == ""
