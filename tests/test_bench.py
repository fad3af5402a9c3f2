"""The benchmark's ceilings and summaries: honest by construction, so its ratios compare like with like."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bench import bare, report, roundtrips
from bench.healing import Healing, Idle
from bench.results_model import Results
from bench.roundtrips import RoundTrips
from bench.stats import Latency
from bench.throughput import Rate
from bench.usage import Usage
from bench.wire import CountingProxy
from models.database import libpq_url

KIND = "BenchCeilingTest"
"""A kind no worker knows, its status row never due: only the test touches it."""


def test_the_bare_ceiling_does_a_noop_reconciles_writes_in_one_round_trip(database_url: str, unique: str) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO statuses (kind, name, uid, generation, phase) "
            "VALUES (%s, %s, gen_random_uuid(), 3, 'Pending')",
            (KIND, unique),
        )
    admin = make_url(database_url)
    with CountingProxy(admin.host or "127.0.0.1", admin.port or 5432) as proxy:
        with psycopg.connect(libpq_url(roundtrips.proxied(database_url, proxy)), autocommit=True) as conn:
            proxy.take()  # the handshake is not the task's
            bare.record(conn, KIND, unique)
            traffic = proxy.take()
    assert traffic.round_trips == 1, traffic
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        status = conn.execute(
            "SELECT observed_generation, ready, phase FROM statuses WHERE kind = %s AND name = %s", (KIND, unique)
        ).fetchone()
        runs = conn.execute(
            "SELECT generation, outcome, worker FROM runs WHERE kind = %s AND name = %s", (KIND, unique)
        ).fetchall()
        conn.execute("DELETE FROM runs WHERE kind = %s AND name = %s", (KIND, unique))
        conn.execute("DELETE FROM statuses WHERE kind = %s AND name = %s", (KIND, unique))
    assert status == (3, True, "Ready")
    assert runs == [(3, "noop", bare.WORKER_NAME)]


def _rate(per_s: float) -> Rate:
    """A round of 101 tasks at `per_s` (the first at 1 s, the last 100 tasks later)."""
    return Rate(101, 1.0, 1.0 + 100 / per_s, {"worker": 2.0})


def _results(ours: list[float], bare_rates: list[float]) -> Results:
    latency = Latency(10, 0.010, 0.020, 0.025)
    return Results(
        "quick", "2026-12-01T00:00:00+00:00", "test", "test", 10, latency, Latency(10, 0.005, 0.010, 0.012),
        latency, 1.0, [_rate(r) for r in ours], [_rate(r) for r in bare_rates], RoundTrips(1, 2.0, 0, {}), 1.0, [],
        None, 1.0,
    )  # fmt: skip


def test_throughput_is_the_median_of_the_rounds_with_their_range_not_the_best() -> None:
    results = _results([300, 100, 320, 310, 290], [400, 420, 800, 410, 390])
    spread = results.throughput
    assert (spread.count, round(spread.median), round(spread.low), round(spread.high)) == (5, 300, 100, 320)
    assert round(results.ceiling.median) == 410
    assert round(results.throughput_ratio, 3) == round(300 / 410, 3)


def test_reaction_is_a_ratio_against_the_bare_chain() -> None:
    assert _results([1], [1]).reaction_ratio == (2.0, 2.0)


def _healing() -> Healing:
    idle = Usage(0.004, 300.0, 0.24)
    return Healing(
        200, 300, 2, Latency(200, 0.030, 0.060, 0.070), Latency(200, 1.200, 2.400, 2.500),
        Latency(30, 0.080, 0.120, 0.130), Latency(30, 1.600, 2.400, 2.600), Latency(20, 1.000, 2.000, 2.000),
        [Idle(True, 2000, 100, 130, 137, 10.0, idle, 110.0),
         Idle(False, 2000, 100, 0, 3, 10.0, Usage(0.001, 290.0, 0.06), 100.0)],
        80.0,
    )  # fmt: skip


def test_healing_is_reported_as_gains_over_polling_and_supervisord_against_its_targets() -> None:
    results = dataclasses.replace(_results([300], [400]), healing=_healing())
    healing = results.healing
    assert healing is not None
    assert healing.tamper_gain == (40.0, 40.0)
    assert healing.kill_gain == (20.0, 20.0)
    assert healing.supervisord_gain == (12.5, 2000 / 120)
    text = report.markdown(results)
    assert "## Healing" in text
    tamper_row = next(line for line in text.splitlines() if line.startswith("| tamper → file content back"))
    assert "30.0 ms / 60.0 ms / 70.0 ms" in tamper_row and "**40×** / **40×**" in tamper_row
    assert tamper_row.endswith("| yes |")
    kill_row = next(line for line in text.splitlines() if line.startswith("| replica SIGKILL"))
    assert "supervisord `autorestart=true`: 1.00 s / 2.00 s / 2.00 s; Setpoint **12×**" in kill_row
    assert kill_row.endswith("| yes |")
    assert any("watching adds +10 MB; main process +10 MB" in line for line in text.splitlines())
    assert any("watching heals 40x faster" in line for line in report.headlines(results))
    assert results.to_json()["healing"]["gains_p50_p99"]["tamper_watching_over_polling"] == (40.0, 40.0)


def test_a_slow_heal_is_reported_as_missing_its_target() -> None:
    slow = dataclasses.replace(_healing(), tamper_watching=Latency(200, 0.150, 0.600, 0.700))
    text = report.markdown(dataclasses.replace(_results([300], [400]), healing=slow))
    tamper_row = next(line for line in text.splitlines() if line.startswith("| tamper → file content back"))
    assert tamper_row.endswith("| **no** |")


def test_a_run_without_healing_still_renders() -> None:
    results = _results([300], [400])
    assert "## Healing" not in report.markdown(results)
    assert not any("healing" in line for line in report.headlines(results))


def test_dependencies_are_reported_against_ten_reactions_and_a_flat_set() -> None:
    from bench.dependencies import Converge, Dependencies

    def converge(seconds: float, scheduler_ms: float) -> Converge:
        return Converge(seconds, 1000, {"scheduler": scheduler_ms, "worker": 2.0, "database": 1.0})

    linked = Dependencies(10, Latency(10, 0.080, 0.150, 0.160), 1000, [converge(4.0, 0.3)], [converge(3.0, 0.2)])
    results = dataclasses.replace(_results([300], [400]), dependencies=linked)  # reaction p99 20 ms: target 200 ms
    text = report.markdown(results)
    chain_row = next(line for line in text.splitlines() if line.startswith("| fix → last of 10 ready"))
    assert "≤ 10 × reaction p99 = 200.0 ms | yes | 150 s expected, 300 s at worst |" in chain_row
    assert "| CPU per resource: scheduler | 0.30 ms | 0.20 ms | 1.50× |" in text
    assert "| time to all ready | 4.00 s | 3.00 s | 1.33× |" in text
    assert results.to_json()["dependencies"]["derived"]["tree_over_flat_cpu"]["scheduler"] == pytest.approx(1.5)
    slow = dataclasses.replace(linked, chain=Latency(10, 0.300, 0.400, 0.500))
    slow_row = report.markdown(dataclasses.replace(results, dependencies=slow)).split("| fix → last of 10 ready")[1]
    assert "| **no** |" in slow_row.splitlines()[0]
