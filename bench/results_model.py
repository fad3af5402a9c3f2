"""Everything one benchmark run measured, in one value that the report renders and results.json keeps."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.dependencies import Dependencies
from bench.healing import Healing
from bench.hold import Hold
from bench.roundtrips import RoundTrips
from bench.scale import SchedulerLoad
from bench.stats import Latency, Spread
from bench.throughput import Rate

NAIVE_PERIOD_S = 30.0
"""The naive peers' period for the comparison: Setpoint's default interval."""


@dataclasses.dataclass(frozen=True)
class Results:
    mode: str
    date: str
    """When the run started (UTC, ISO 8601)."""
    machine: str
    servers: str
    stack_resources: int
    """No-op resources in the database while reaction and throughput were measured."""
    reaction: Latency
    reaction_ceiling: Latency
    """The bare chain's reaction (bench/bare_chain.py), measured change by change alternately with Setpoint's."""
    naive_loop: Latency
    """The real periodic loop's reaction, at `naive_loop_period_s`."""
    naive_loop_period_s: float
    throughput_rounds: list[Rate]
    ceiling_rounds: list[Rate]
    """The bare task's rounds, run alternately with Setpoint's (S, C, S, C, …)."""
    round_trips: RoundTrips
    bare_round_trips: float
    """Round trips per bare task, counted the same way."""
    scale: list[SchedulerLoad]
    hold: Hold | None
    """The load held, or None where the run did not hold one (quick)."""
    duration_s: float
    healing: Healing | None = None
    """Healing at the speed of the event (issue 12); None in a run from before it was measured."""
    dependencies: Dependencies | None = None
    """A chain of dependencies and a dependency tree (issue 13); None in a run from before it was measured."""

    @property
    def naive(self) -> Latency:
        """A periodic loop's reaction at NAIVE_PERIOD_S, derived, not measured: a change waits for the next pass,
        at a uniformly random point of the period (p50 half a period, p99 0.99 of it); the real loop measured at
        a short period checks this shape."""
        return Latency(0, NAIVE_PERIOD_S / 2, NAIVE_PERIOD_S * 0.99, NAIVE_PERIOD_S)

    @property
    def throughput(self) -> Spread:
        """Setpoint's no-op reconciles per second over its rounds."""
        return Spread.of([rate.steady_per_s for rate in self.throughput_rounds])

    @property
    def ceiling(self) -> Spread:
        """The bare task's rate over its rounds."""
        return Spread.of([rate.steady_per_s for rate in self.ceiling_rounds])

    @property
    def throughput_ratio(self) -> float:
        """Setpoint's median rate over the bare task's median rate."""
        return self.throughput.median / self.ceiling.median

    @property
    def round_ratios(self) -> Spread:
        """Each Setpoint round over the bare round that followed it: how far the ratio moves with the machine."""
        pairs = zip(self.throughput_rounds, self.ceiling_rounds, strict=True)
        return Spread.of([ours.steady_per_s / bare.steady_per_s for ours, bare in pairs])

    @property
    def reaction_ratio(self) -> tuple[float, float]:
        """Setpoint's reaction p50 and p99 as multiples of the bare chain's (1.0: no slower than the ceiling)."""
        return (self.reaction.p50_s / self.reaction_ceiling.p50_s, self.reaction.p99_s / self.reaction_ceiling.p99_s)

    def cpu_ms_per_task(self, rounds: list[Rate]) -> dict[str, float]:
        """CPU milliseconds per task of each group of processes, over all of `rounds` together."""
        groups = dict.fromkeys(group for rate in rounds for group in rate.cpu_ms_per_task)
        tasks = sum(rate.count for rate in rounds)
        return {
            group: sum(rate.cpu_ms_per_task.get(group, 0.0) * rate.count for rate in rounds) / tasks for group in groups
        }

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["naive"] = dataclasses.asdict(self.naive)
        data["naive_derived_not_measured"] = True
        data["throughput"] = dataclasses.asdict(self.throughput)
        data["ceiling"] = dataclasses.asdict(self.ceiling)
        data["throughput_ratio"] = self.throughput_ratio
        data["round_ratios"] = dataclasses.asdict(self.round_ratios)
        data["reaction_ratio_p50"], data["reaction_ratio_p99"] = self.reaction_ratio
        if self.healing:
            h = self.healing
            data["healing"]["gains_p50_p99"] = {
                "tamper_watching_over_polling": h.tamper_gain,
                "kill_watching_over_polling": h.kill_gain,
                "kill_setpoint_over_supervisord": h.supervisord_gain,
            }
        if self.dependencies:
            d = self.dependencies
            data["dependencies"]["derived"] = {
                "chain_target_s": d.chain_length * self.reaction.p99_s,
                "flux_recheck_expected_s": d.flux_expected_s,
                "flux_recheck_worst_s": d.flux_worst_s,
                "tree_over_flat_cpu": {part: d.tree_over_flat(part) for part in ("scheduler", "worker", "database")},
            }
        for key in ("throughput_rounds", "ceiling_rounds"):
            for data_round, each in zip(data[key], getattr(self, key), strict=True):
                data_round.update(steady_per_s=each.steady_per_s, end_to_end_per_s=each.end_to_end_per_s)
        return data
