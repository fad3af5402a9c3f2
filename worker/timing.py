"""When a resource is next due: its period with jitter, and the backoff after consecutive failures."""

from __future__ import annotations

import random


def jittered(interval_seconds: float, jitter_ratio: float, rng: random.Random) -> float:
    """Seconds until the next period, spread by up to ±jitter_ratio so resources created together drift apart."""
    return interval_seconds * (1 + rng.uniform(-jitter_ratio, jitter_ratio))


def backoff_seconds(failures: int, base_seconds: float, max_seconds: float, rng: random.Random) -> float:
    """base·2^(failures-1), capped, plus up to 20% jitter: each delay is longer than the one before it
    until the cap, and failing resources created together do not retry in lockstep."""
    exponent = min(max(failures - 1, 0), 32)
    delay = min(base_seconds * 2**exponent, max_seconds)
    return min(delay * (1 + rng.uniform(0, 0.2)), max_seconds)
