"""Everything one benchmark run measured, in one value that the report renders and results.json keeps."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.hold import Hold
from bench.roundtrips import RoundTrips
from bench.scale import SchedulerLoad
from bench.stats import Latency
from bench.throughput import Rate

NAIVE_PERIOD_S = 30.0
"""The naive peers' period for the comparison: Setpoint's default interval."""


@dataclasses.dataclass(frozen=True)
class Results:
    mode: str
    machine: str
    servers: str
    stack_resources: int
    """No-op resources in the database while reaction and throughput were measured."""
    reaction: Latency
    naive_loop: Latency
    """The real periodic loop's reaction, at `naive_loop_period_s`."""
    naive_loop_period_s: float
    throughput: Rate
    """The best of `throughput_rounds`."""
    ceiling: Rate
    """The best of `ceiling_rounds`."""
    throughput_rounds: list[Rate]
    ceiling_rounds: list[Rate]
    round_trips: RoundTrips
    scale: list[SchedulerLoad]
    hold: Hold | None
    """The load held, or None where the run did not hold one (quick)."""
    duration_s: float

    @property
    def naive(self) -> Latency:
        """A periodic loop's reaction at NAIVE_PERIOD_S: a change waits for the next pass, at a uniformly random
        point of the period (p50 half a period, p99 0.99 of it); the real loop checks this at a short period."""
        return Latency(0, NAIVE_PERIOD_S / 2, NAIVE_PERIOD_S * 0.99, NAIVE_PERIOD_S)

    @property
    def throughput_ratio(self) -> float:
        return self.throughput.steady_per_s / self.ceiling.steady_per_s

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["naive"] = dataclasses.asdict(self.naive)
        data["throughput_ratio"] = self.throughput_ratio
        for key in ("throughput", "ceiling"):
            rate: Rate = getattr(self, key)
            data[key].update(steady_per_s=rate.steady_per_s, end_to_end_per_s=rate.end_to_end_per_s)
            for data_round, each in zip(data[f"{key}_rounds"], getattr(self, f"{key}_rounds"), strict=True):
                data_round.update(steady_per_s=each.steady_per_s)
        return data
