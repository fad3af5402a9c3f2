"""Run history stays bounded: each resource keeps its last N routine runs, and changes and failures for D days."""

from __future__ import annotations

from sqlalchemy import Engine, text

from scheduler import retention
from tests.helpers import runs, unwatched

LIVE = "INSERT INTO files (name, path) VALUES (:n, '/tmp/retained-' || CAST(:n AS varchar))"
"""A live resource with no run but the test's own."""

RUN = """INSERT INTO runs (kind, name, generation, started_at, finished_at, duration_ms, outcome)
         SELECT 'File', :name, 1, now() - make_interval(days => :age_days) - make_interval(secs => i),
                now() - make_interval(days => :age_days) - make_interval(secs => i), 1, :outcome
         FROM generate_series(1, :count) AS i"""


def test_prune_keeps_recent_noops_and_young_changes(engine: Engine, unique: str) -> None:
    unwatched(engine, LIVE, unique)
    with engine.begin() as conn:
        for outcome, count, age_days in [("noop", 50, 0), ("changed", 5, 0), ("failed", 5, 30), ("changed", 3, 30)]:
            conn.execute(text(RUN), {"name": unique, "outcome": outcome, "count": count, "age_days": age_days})
    retention.prune(engine, keep=10, days=14)
    kept = runs(engine, unique)
    outcomes = [r["outcome"] for r in kept]
    assert outcomes.count("noop") == 10, "the last 10 no-ops stay"
    assert outcomes.count("changed") == 5 + 3 and outcomes.count("failed") == 2
    # Old changes and failures go once a resource has more than `keep` of them: 13 non-routine runs, 10 kept.
    assert len([r for r in kept if r["outcome"] != "noop"]) == 10


def test_prune_keeps_a_small_history_of_a_live_resource(engine: Engine, unique: str) -> None:
    unwatched(engine, LIVE, unique)
    with engine.begin() as conn:
        conn.execute(text(RUN), {"name": unique, "outcome": "changed", "count": 3, "age_days": 100})
    retention.prune(engine, keep=10, days=14)
    assert len(runs(engine, unique)) == 3


def test_prune_forgets_resources_long_gone(engine: Engine, unique: str) -> None:
    with engine.begin() as conn:  # no desired row, no status: deleted long ago
        conn.execute(text(RUN), {"name": unique, "outcome": "deleted", "count": 3, "age_days": 100})
        conn.execute(text(RUN), {"name": f"{unique}-recent", "outcome": "deleted", "count": 3, "age_days": 1})
    retention.prune(engine, keep=10, days=14)
    assert runs(engine, unique) == [] and len(runs(engine, f"{unique}-recent")) == 3
