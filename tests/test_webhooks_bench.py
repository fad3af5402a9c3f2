"""The webhooks benchmark part reports its figures against the issue's target, as values."""

from __future__ import annotations

from bench.stats import Latency
from bench.webhooks import Webhooks, headlines


def test_the_rate_and_the_target_are_reported() -> None:
    fast = Webhooks(Latency(1000, 0.005, 0.02, 0.05), burst=10_000, burst_s=40.0, scheduler_cpu_ms=1.3)
    assert fast.per_s == 250
    assert fast.to_json()["per_s"] == 250 and fast.to_json()["target_p99_s"] == 0.25
    latency, rate = headlines(fast)
    assert "p50 / p99 5.0 / 20.0 ms over 1000" in latency and "met" in latency
    assert "250 deliveries/s" in rate and "1.30 ms of the scheduler's CPU each" in rate


def test_a_p99_over_250_ms_is_reported_as_missing_the_target() -> None:
    slow = Webhooks(Latency(1000, 0.1, 0.3, 0.5), burst=100, burst_s=1.0, scheduler_cpu_ms=1.0)
    assert "MISSED" in headlines(slow)[0]
