"""The retry policy's jitter: each process draws its own."""

from __future__ import annotations

import os

from tasks.retries import _JITTER


def test_a_forked_pool_process_draws_its_own_jitter() -> None:
    # prefork pool processes are forks of the main process: with one copied
    # state they would all back off by the same amounts and retry in step
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next draw and leave at once
        os.write(write, repr(_JITTER.random()).encode())
        os._exit(0)
    os.close(write)
    child = float(os.read(read, 64))
    os.close(read)
    os.waitpid(pid, 0)

    assert child != _JITTER.random()
