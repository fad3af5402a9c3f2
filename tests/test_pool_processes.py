"""What each forked Celery pool process must not share with its siblings."""

from __future__ import annotations

import os

from worker import tasks


def _draw_in_a_forked_pool_process() -> float:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the pool process Celery's prefork pool would make
        os.close(read)
        tasks._fresh_connections()
        os.write(write, repr(tasks._rng.random()).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        drawn = float(answer.read())
    os.waitpid(pid, 0)
    return drawn


def test_pool_processes_jitter_independently() -> None:
    draws = {_draw_in_a_forked_pool_process() for _ in range(3)}
    assert len(draws) == 3, "each pool process draws its own jitter, not its siblings' sequence"
