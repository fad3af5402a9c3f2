"""CPU and memory of processes over a measured span: CPU seconds per wall second, and the peak resident size."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable

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
    one that cannot be found at all counts as zero.

    With `discover`, the processes it names at each sample are watched too: a connection pool opens and closes
    sessions during a span (its overflow), and a list taken at the start would miss what they spend."""

    def __init__(self, pids: list[int], every_s: float = 0.5, discover: Callable[[], list[int]] | None = None) -> None:
        self.processes: list[psutil.Process] = []
        self._last_cpu: dict[int, float] = {}
        self._before_start = 0.0
        """CPU that processes found during the span had spent before it started."""
        self._started_at: float | None = None
        for pid in pids:
            self._add(pid)
        self.discover = discover
        self.every_s = every_s
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._cpu0 = 0.0
        self._wall0 = 0.0

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def start(self) -> None:
        self._discover()
        self._cpu0, self._wall0 = self._cpu(), time.monotonic()
        self._started_at = time.time()
        self._thread.start()

    def stop(self) -> Usage:
        self._stop.set()
        self._thread.join()
        self._sample()
        cpu, wall = self._cpu() - self._before_start, time.monotonic()
        return Usage((cpu - self._cpu0) / (wall - self._wall0), self.peak_rss / 2**20, cpu - self._cpu0)

    def _add(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            times = process.cpu_times()
            self.processes.append(process)
            if self._started_at is not None:  # found during the span: count only what it spent after the start
                self._last_cpu[pid] = times.user + times.system
                if process.create_time() < self._started_at:
                    self._before_start += times.user + times.system

    def _discover(self) -> None:
        if self.discover is None:
            return
        known = set(self.pids)
        for pid in self.discover():
            if pid not in known:
                self._add(pid)

    def _cpu(self) -> float:
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                self._last_cpu[process.pid] = times.user + times.system
        return sum(self._last_cpu.values())

    def _sample(self) -> None:
        self._discover()
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
