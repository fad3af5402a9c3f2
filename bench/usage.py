"""CPU and memory of processes over a measured span: CPU seconds per wall second, and the peak resident size."""

from __future__ import annotations

import dataclasses
import threading
import time

import psutil


@dataclasses.dataclass(frozen=True)
class Usage:
    cpu_share: float
    """CPU seconds (user + system, all threads) per wall-clock second: 0.2 is 20% of one core."""
    peak_rss_mb: float
    """The largest resident set size (of all processes summed) seen, sampled every half second."""
    cpu_seconds: float
    """CPU seconds spent in the span."""


class Sampler:
    """Watches processes from `start()` to `stop()`; processes that cannot be read count as zero."""

    def __init__(self, pids: list[int], every_s: float = 0.5) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
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
        total = 0.0
        for process in self.processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def _sample(self) -> None:
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
