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


def median(samples: Sequence[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclasses.dataclass(frozen=True)
class Spread:
    """Repeated measurements of one figure (say rounds of a throughput run): their median and their range.

    The median, not the best: other load on a shared machine slows some rounds down, and which round it hits
    is luck, so the best round flatters whichever side was lucky. The range says how much luck there was."""

    count: int
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        return cls(len(samples), median(samples), min(samples, default=math.nan), max(samples, default=math.nan))
