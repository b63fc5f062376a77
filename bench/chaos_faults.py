"""The faults of a chaos run, fired one by one as the drain progresses.

Each fault is due at a random share of the unique keys accepted by Clix (so a
fast machine and a slow one see the same faults mid-run), or once the drain
has not moved for ``stall_s``. Every fault is logged as a :class:`FaultEvent`
with wall-clock times, which the verdict compares with the sandbox's records.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.chaos_fleet import ChaosFleet
from bench.chaos_load import key_of

__all__ = ["FaultDriver", "FaultEvent", "FaultPlan"]

_AFTER_ACCEPT_DELAY_S = 1.5  # Clix holds this answer; the store is cut just before it goes
_CUT_LEAD_S = 0.2


@dataclass
class FaultEvent:
    """One fault as it happened: kind, wall-clock start and end, and what it hit."""

    kind: str
    start: float
    end: float
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class FaultPlan:
    """How many of each fault, and how long the long ones last."""

    kills: int = 5
    cuts: int = 5  # store connection cuts of 1-3 s, one of them right after Clix accepted
    window_429_s: float = 20.0
    hold_s: float = 10.0  # one Clix answer held this long (past the lease)
    stall_s: float = 30.0


class FaultDriver:
    """Fires a shuffled list of faults against ``fleet`` as ``progress()`` (0..1) grows."""

    def __init__(
        self,
        fleet: ChaosFleet,
        campaign: str,
        plan: FaultPlan,
        rng: random.Random,
        progress: Callable[[], float],
    ) -> None:
        self.fleet = fleet
        self.campaign = campaign
        self.plan = plan
        self.rng = rng
        self.progress = progress
        self.events: list[FaultEvent] = []
        self._seen: set[float] = set()  # arrival times of held requests already named
        actions: list[Callable[[], None]] = [self.kill] * plan.kills
        actions += [self.cut] * max(0, plan.cuts - 1) + [self.cut_after_accept] * min(1, plan.cuts)
        actions += [self.restart_store, self.restart_broker, self.window_429, self.hold_answer]
        rng.shuffle(actions)
        shares = sorted(rng.uniform(0.05, 0.8) for _ in actions)
        self.schedule = list(zip(shares, actions, strict=True))

    def run(self) -> None:
        """Fire every fault in turn; returns when the last one has been fired."""
        last_fired, last_progress = time.monotonic(), -1.0
        for share, action in self.schedule:
            while True:
                progress = self.progress()
                if progress != last_progress:
                    last_progress, last_fired = progress, max(last_fired, time.monotonic())
                if progress >= share or time.monotonic() - last_fired > self.plan.stall_s:
                    break
                time.sleep(0.2)
            action()
            last_fired = time.monotonic()

    # -- the faults -------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL a random worker, then start a replacement (the fleet keeps its size)."""
        start = time.time()
        name = self.fleet.kill_random_worker()
        self.fleet.add_worker()
        self._log("worker_kill", start, worker=name, replaced_at=time.time())

    def cut(self) -> None:
        """Drop the store's connections and refuse new ones for 1-3 s."""
        seconds = self.rng.uniform(1, 3)
        start = time.time()
        self._proxy().cut(seconds)
        self._log("store_cut", start, start + seconds)

    def cut_after_accept(self) -> None:
        """Hold one Clix answer 1.5 s; cut the store 0.2 s before it goes out.

        The worker gets its 200 while the store is away, so it cannot record the
        trigger as done at once: exactly the moment "right after Clix accepted".
        """
        answer = {"status": 200, "delay_ms": _AFTER_ACCEPT_DELAY_S * 1000}
        self._sandbox().script(self.campaign, answer)
        held = self._wait_held(min_age_s=0.5)
        if held is None:
            self._log("store_cut_after_accept", time.time(), missed=True)
            return
        time.sleep(max(0.0, held["at"] + _AFTER_ACCEPT_DELAY_S - _CUT_LEAD_S - time.time()))
        seconds = self.rng.uniform(1, 3)
        start = time.time()
        self._proxy().cut(seconds)
        detail = {"key": key_of(held), "answer_delay_s": _AFTER_ACCEPT_DELAY_S}
        self._log("store_cut_after_accept", start, start + seconds, **detail)

    def hold_answer(self) -> None:
        """Hold one Clix answer past the lease (the worker's request times out first)."""
        hold_ms = self.plan.hold_s * 1000
        self._sandbox().script(self.campaign, {"status": 200, "delay_ms": hold_ms})
        held = self._wait_held(min_age_s=1.0)
        if held is None:
            self._log("answer_held", time.time(), missed=True)
            return
        detail = {"key": key_of(held), "answer_delay_s": self.plan.hold_s}
        self._log("answer_held", held["at"], held["at"] + self.plan.hold_s, **detail)

    def restart_store(self) -> None:
        """Restart the store's Redis (AOF, same port)."""
        start = time.time()
        self.fleet.restart_store()
        self._log("store_restart", start)

    def restart_broker(self) -> None:
        """Restart the broker's Redis (AOF, same port); the store's, when it is the broker."""
        start = time.time()
        self.fleet.restart_broker()
        # with the broker in the store, the restart is a store fault as well
        self._log("store_restart" if self.fleet.broker_in_store else "broker_restart", start)

    def window_429(self) -> None:
        """Clix answers 429 to (nearly) everything for a while (the 2% drops still happen)."""
        start = time.time()
        self._sandbox().configure(rate_429=1.0)
        time.sleep(self.plan.window_429_s)
        self._sandbox().configure(rate_429=0.0)
        self._log("window_429", start)

    # -- helpers ----------------------------------------------------------------------------

    def _wait_held(self, min_age_s: float, timeout_s: float = 60.0) -> dict[str, Any] | None:
        """The scripted, delayed request once it has arrived (older than any normal answer)."""
        deadline = time.monotonic() + timeout_s
        http = self._sandbox().http
        while time.monotonic() < deadline:
            held = http.get("/_sandbox/in_flight", params={"campaign_id": self.campaign})
            now = time.time()
            for record in held.json()["in_flight"]:
                if now - record["at"] >= min_age_s and record["at"] not in self._seen:
                    self._seen.add(record["at"])
                    return dict(record)
            time.sleep(0.05)
        return None

    def _log(self, kind: str, start: float, end: float | None = None, **detail: Any) -> None:
        event = FaultEvent(kind, start, end if end is not None else time.time(), detail)
        self.events.append(event)
        print(f"chaos: {kind} {detail or ''}".rstrip(), file=sys.stderr, flush=True)

    def _proxy(self) -> Any:
        assert self.fleet.proxy is not None
        return self.fleet.proxy

    def _sandbox(self) -> Any:
        assert self.fleet.sandbox is not None
        return self.fleet.sandbox
