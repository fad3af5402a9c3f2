"""Percentiles of measured samples, summarised the same way for Setpoint and for its peers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method: a value that was actually measured."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass(frozen=True)
class Latency:
    """A latency distribution in seconds."""

    count: int
    p50_s: float
    p99_s: float
    max_s: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        return cls(len(samples), percentile(samples, 50), percentile(samples, 99), max(samples, default=math.nan))
