"""The side-by-side benchmark counts both workers only while both had work."""

from __future__ import annotations

from bench.side_by_side import _busy


def test_the_window_is_whole_while_both_backlogs_last() -> None:
    arrivals = {"bare": [0.5, 1.0, 2.5], "clix": [0.4, 2.9]}
    assert _busy(arrivals, backlog=10, start=1.0, end=3.0) == 2.0


def test_the_window_ends_when_one_backlog_ran_dry() -> None:
    # bare delivered its whole backlog of 3 by 1.8: clix alone after that is not side by side
    arrivals = {"bare": [0.5, 1.2, 1.8], "clix": [0.4, 1.1, 2.9]}
    assert _busy(arrivals, backlog=3, start=1.0, end=3.0) == 0.8


def test_a_backlog_drained_before_the_window_leaves_no_window() -> None:
    arrivals = {"bare": [0.1, 0.2, 0.3], "clix": [0.4, 1.1, 2.9]}
    assert _busy(arrivals, backlog=3, start=1.0, end=3.0) == 0.0
