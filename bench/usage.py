"""CPU and memory of processes over a measured span: CPU seconds per wall second, and the peak resident size."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

import psutil
import psycopg


@dataclasses.dataclass(frozen=True)
class Usage:
    cpu_share: float
    """CPU seconds (user + system, all threads) per wall-clock second: 0.2 is 20% of one core."""
    peak_rss_mb: float
    """The largest resident set size (of all processes summed) seen, sampled every half second."""
    cpu_seconds: float
    """CPU seconds spent in the span."""


_SESSIONS = """SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> ALL(%s)"""


def database_sessions(conn: psycopg.Connection, ours: list[int]) -> list[int]:
    """The server processes of the clients of `conn`'s database but `ours` (backend pids), where this machine can
    see them; autovacuum and other background workers are not clients."""
    pids = [row[0] for row in conn.execute(_SESSIONS, (ours,))]
    return [pid for pid in pids if psutil.pid_exists(pid)]


class Sampler:
    """Watches processes from `start()` to `stop()`; one that exits counts with the CPU it had at the last sample,
    one that cannot be found at all counts as zero."""

    def __init__(self, pids: list[int], every_s: float = 0.5) -> None:
        self.processes = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.processes.append(psutil.Process(pid))
        self._last_cpu: dict[int, float] = {}
        self.every_s = every_s
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._cpu0 = 0.0
        self._wall0 = 0.0

    def start(self) -> None:
        self._cpu0, self._wall0 = self._cpu(), time.monotonic()
        self._thread.start()

    def stop(self) -> Usage:
        cpu, wall = self._cpu(), time.monotonic()
        self._stop.set()
        self._thread.join()
        self._sample()
        return Usage((cpu - self._cpu0) / (wall - self._wall0), self.peak_rss / 2**20, cpu - self._cpu0)

    def _cpu(self) -> float:
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                self._last_cpu[process.pid] = times.user + times.system
        return sum(self._last_cpu.values())

    def _sample(self) -> None:
        self._cpu()
        rss = 0
        for process in self.processes:
            try:
                rss += process.memory_info().rss
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()
