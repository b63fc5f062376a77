"""The chaos run's verdict: which faults explain a duplicate send (bench/chaos_verdict.py)."""

from __future__ import annotations

from bench.chaos_faults import FaultEvent
from bench.chaos_load import Load
from bench.chaos_verdict import _causes, judge

ACCEPTED = 100.0


def test_a_worker_killed_long_after_the_answer_explains_nothing_alone() -> None:
    kill = FaultEvent("worker_kill", ACCEPTED + 10, ACCEPTED + 10.1)

    assert _causes("k1", [ACCEPTED, ACCEPTED + 30], [kill]) == []


def test_a_store_fault_alone_is_blamed_on_the_store() -> None:
    cut = FaultEvent("store_cut", ACCEPTED + 1, ACCEPTED + 3)

    assert _causes("k1", [ACCEPTED, ACCEPTED + 30], [cut]) == ["store"]


def test_a_worker_killed_while_its_commit_waits_out_a_store_fault_explains_the_duplicate() -> None:
    # accepted, then the store went away (commits retried) and the worker was
    # killed before it came back: the duplicate is the kill's, which the design allows
    cut = FaultEvent("store_cut", ACCEPTED + 1, ACCEPTED + 5)
    kill = FaultEvent("worker_kill", ACCEPTED + 4, ACCEPTED + 4.1)

    assert _causes("k1", [ACCEPTED, ACCEPTED + 30], [cut, kill]) == ["store", "worker_kill"]


def test_store_faults_back_to_back_stretch_the_window_to_the_last() -> None:
    first = FaultEvent("store_cut", ACCEPTED + 1, ACCEPTED + 3)
    second = FaultEvent("store_restart", ACCEPTED + 4.5, ACCEPTED + 8)
    kill = FaultEvent("worker_kill", ACCEPTED + 9, ACCEPTED + 9.1)

    assert "worker_kill" in _causes("k1", [ACCEPTED, ACCEPTED + 30], [first, second, kill])


def _load_of(keys: list[str], gave_up: list[str]) -> Load:
    load = Load(campaign="c", poison_campaign="p", marker="m", unique_keys=keys)
    load.gave_up = gave_up
    return load


def test_a_key_no_producer_could_enqueue_is_not_lost_but_an_enqueued_one_is() -> None:
    load = _load_of(["k0", "k1", "k2"], gave_up=["k2"])
    states = {"k0": "done", "k1": "queued", "k2": "unknown"}
    verdict = judge(load, states, requests=[], dlq_entries=[], ambiguous=0, events=[])
    assert verdict.lost == 1
    assert verdict.details["lost_keys"] == {"k1": "queued"}
    assert verdict.details["enqueue"]["gave_up"] == ["k2"]
    assert not verdict.checks["lost_is_zero"]
