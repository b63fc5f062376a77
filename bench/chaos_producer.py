"""A chaos run's producer: an application enqueueing through the faults, as apps do.

    python -m bench.chaos_producer FILE --rate 40 [--give-up-s 90]

Reads JSON lines of trigger kwargs and calls ``enqueue_trigger`` for each, at
``--rate`` per second, while the chaos run cuts the store's connections and
restarts the store and the broker. An enqueue that raises (anything but
:class:`~tasks.errors.InvalidTrigger`, which is a bug in the load) is retried
with the same kwargs and a capped backoff, the way application code retries
it: the idempotency key makes a retry of an enqueue that did queue its message
a duplicate, never a second send. After ``--give-up-s`` on one trigger it is
given up, and its key reported. Prints one JSON object::

    {"enqueued": 597, "retried": 12, "gave_up": [], "errors": {"ConnectionError": 14},
     "elapsed_s": 15.2}

``enqueued`` counts triggers whose enqueue returned; ``retried`` those that
needed more than one call; ``errors`` the exceptions seen, by type.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _wait(seconds: float) -> None:
    """Sleep without ``clock_nanosleep``: a wait on an event nobody sets."""
    threading.Event().wait(seconds)


if "faketime" in os.environ.get("LD_PRELOAD", ""):
    # Under libfaketime with the monotonic clock left real, Python 3.11's
    # time.sleep (an absolute clock_nanosleep on CLOCK_MONOTONIC) fails with
    # EINVAL: in this script, and in kombu's and redis-py's reconnect backoff,
    # which import it by name (hence before they are imported). A harness
    # artefact, not a skewed clock's; event waits are unaffected.
    time.sleep = _wait

from tasks import enqueue_trigger  # noqa: E402
from tasks.errors import InvalidTrigger  # noqa: E402

#: First and longest pause between two calls for one trigger.
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0


def enqueue_through_faults(
    trigger: dict[str, Any],
    *,
    give_up_s: float,
    errors: collections.Counter[str],
    enqueue: Callable[..., Any] = enqueue_trigger,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int | None:
    """Enqueue ``trigger``, retrying failures; the calls it took, or None if given up."""
    deadline = clock() + give_up_s
    pause, calls = RETRY_FIRST_S, 0
    while True:
        calls += 1
        try:
            enqueue(**trigger)
            return calls
        except InvalidTrigger:
            raise  # the load is wrong, not the system: stop the run loudly
        except Exception as exc:  # noqa: BLE001 - an app retries whatever the outage raised
            errors[type(exc).__name__] += 1
        if clock() + pause > deadline:
            return None
        sleep(pause)
        pause = min(pause * 2, RETRY_MAX_S)


def main(argv: list[str] | None = None) -> int:
    """Enqueue every line of the file at the given rate; print the JSON summary."""
    sleep = time.sleep  # _wait under libfaketime (see the top of the module)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--rate", type=float, required=True, help="triggers per second")
    parser.add_argument("--give-up-s", type=float, default=90.0)
    args = parser.parse_args(argv)
    triggers = [json.loads(line) for line in args.file.read_text().splitlines() if line]
    errors: collections.Counter[str] = collections.Counter()
    enqueued = retried = 0
    gave_up: list[str] = []
    started = time.monotonic()
    for number, trigger in enumerate(triggers):
        # paced against the start, so time lost to an outage is caught up after it
        due = started + number / args.rate
        sleep(max(0.0, due - time.monotonic()))
        calls = enqueue_through_faults(
            trigger, give_up_s=args.give_up_s, errors=errors, sleep=sleep
        )
        if calls is None:
            gave_up.append(trigger["idempotency_key"])
            continue
        enqueued += 1
        retried += calls > 1
    summary = {
        "enqueued": enqueued,
        "retried": retried,
        "gave_up": gave_up,
        "errors": errors,
        "elapsed_s": round(time.monotonic() - started, 2),  # monotonic: not skewed
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
