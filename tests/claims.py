"""The claim, statement by statement, on a real PostgreSQL with no worker (tests/test_policies.py,
tests/test_rollouts.py, tests/test_rollout_edges.py): a "finished reconcile" is the status write a worker makes.

Each of those modules has a scratch database of its own (the `claims_db` fixture, tests/conftest.py) and starts each
test from `fresh` tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from scheduler import claim
from tests.helpers import sql


def fresh(engine: Engine) -> Engine:
    """No policy, no resource, nothing kept of either."""
    sql(engine, "DELETE FROM policies; DELETE FROM policy_statuses; DELETE FROM noops; DELETE FROM flakies")
    sql(engine, "DELETE FROM statuses")
    return engine


def take(engine: Engine, batch: int = 500) -> list[str]:
    """One claim, as the scheduler's tick makes it: the names it claimed."""
    claims = claim.claim_due(
        engine, batch=batch, default_interval_seconds=60, retry_window_s=8, running_limit_s=600, node_silent_s=60
    )
    return sorted(c.name for c in claims)


def noops(engine: Engine, count: int, labels: str = "{}", prefix: str = "n") -> list[str]:
    names = [f"{prefix}{i:03d}" for i in range(count)]
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO noops (name, labels) VALUES (:name, CAST(:labels AS jsonb))"),
            [{"name": n, "labels": labels} for n in names],
        )
    return names


def finish(engine: Engine, names: list[str], phase: str = "Ready") -> None:
    """What a worker's finishing statement writes: the claim freed, the generation observed, and how it went (ready
    at it: the rollout done)."""
    sql(
        engine,
        """UPDATE statuses SET enqueued_at = NULL, observed_generation = generation, phase = CAST(:phase AS text),
               ready = CAST(:phase AS text) = 'Ready', next_reconcile_at = now() + interval '1 hour',
               rollout_started_at = CASE WHEN CAST(:phase AS text) = 'Ready' THEN NULL ELSE rollout_started_at END
           WHERE name = ANY(:names)""",
        names=names,
        phase=phase,
    )


def status(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM statuses WHERE name = :n"), {"n": name}).mappings().one())


def settled(engine: Engine, count: int) -> list[str]:
    """`count` resources ready at generation 1."""
    names = noops(engine, count)
    finish(engine, take(engine))
    return names


def torn_down(engine: Engine, names: list[str]) -> None:
    """What the worker's finishing statement of a deletion does: the tombstone goes."""
    for name in names:
        sql(engine, "SELECT setpoint_teardown_done('Noop', :n)", n=name)
