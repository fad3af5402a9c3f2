"""The benchmark's ceilings and summaries: honest by construction, so its ratios compare like with like."""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url

from bench import bare, roundtrips
from bench.results_model import Results
from bench.roundtrips import RoundTrips
from bench.stats import Latency
from bench.throughput import Rate
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
