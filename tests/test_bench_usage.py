"""The benchmark's CPU sampler: what a process spends counts, even one that starts during the span."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from bench.usage import Sampler

BUSY_S = 1.0
_BUSY = f"import time\nend = time.process_time() + {BUSY_S}\nwhile time.process_time() < end: pass"


def test_a_process_discovered_during_the_span_counts_with_what_it_spent_in_it() -> None:
    started: list[int] = []
    sampler = Sampler([], every_s=0.05, discover=lambda: started)
    sampler.start()
    busy = subprocess.Popen([sys.executable, "-c", _BUSY])
    started.append(busy.pid)
    busy.wait(timeout=30)
    usage = sampler.stop()
    assert 0.7 * BUSY_S < usage.cpu_seconds < 2 * BUSY_S


def test_a_process_discovered_during_the_span_does_not_count_what_it_spent_before_it() -> None:
    busy = subprocess.Popen([sys.executable, "-c", f"{_BUSY}\nimport sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        process, deadline = psutil.Process(busy.pid), time.monotonic() + 30
        while sum(process.cpu_times()[:2]) < BUSY_S:  # busy, then waiting on its input
            assert time.monotonic() < deadline, "the busy process never got its CPU"
            time.sleep(0.05)
        found: list[int] = []
        sampler = Sampler([], every_s=0.05, discover=lambda: found)
        sampler.start()
        found.append(busy.pid)
        busy.communicate(timeout=30)
        assert sampler.stop().cpu_seconds < 0.3 * BUSY_S
    finally:
        busy.kill()
