"""Rollouts under policies at their edges: races between a claim and an admin, another scheduler or a worker; slots
given back and taken again; resuming; owners; the upgrade to 0020; many backlogs. Each would start more than
max_unready allows, or never go on, without what it tests (each was found failing by a review).

They run the real claim on a real PostgreSQL with no worker, as tests/test_rollouts.py does.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Connection, Engine, text

from models.database import make_engine
from scheduler import claim, held, policies, policy_usage
from tests.claims import finish, fresh, noops, settled, status, take
from tests.conftest import alembic, scratch_database
from tests.helpers import sql


@pytest.fixture
def engine(claims_db: Engine) -> Engine:
    return fresh(claims_db)


def unready(engine: Engine) -> int:
    """What `setpoint get policies` says the one policy has working on a change."""
    with engine.begin() as conn:
        [usage] = policy_usage.usage(conn)
    return usage.unready


def test_a_waiting_resource_claimed_again_counts_while_its_reconcile_runs(engine: Engine) -> None:
    names = settled(engine, 2)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=names[0])
    assert take(engine) == names[:1]
    waits = """UPDATE statuses SET enqueued_at = NULL, phase = 'Waiting', ready = false,
                   observed_generation = generation, next_reconcile_at = now() + interval '1h' WHERE name = :n"""
    sql(engine, waits, n=names[0])
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=names[0])  # its dependency is ready
    assert take(engine) == names[:1], "the slot is free: it is claimed to act"
    # Its reconcile runs (phase still Waiting until the worker finishes); another change arrives.
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=names[1])
    assert take(engine) == [], "the one acting holds the only slot"
    assert unready(engine) == 1


def test_a_change_written_while_the_claim_plans_starts_no_rollout_past_max_unready(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = settled(engine, 2)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=names[0])
    assert take(engine) == names[:1]
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=names[1])  # a periodic reconcile
    admin = engine.connect()
    editing = admin.begin()  # an admin's UPDATE, begun before the claim, commits while the claim plans
    admin.execute(text("UPDATE noops SET note = 'v2' WHERE name = :n"), {"n": names[1]})
    planned = policies.plan

    def plan_then_commit(conn: Connection, batch: int, node_silent_s: float = 60.0) -> policies.Plan:
        found = planned(conn, batch, node_silent_s)
        editing.commit()
        return found

    monkeypatch.setattr(policies, "plan", plan_then_commit)
    try:
        assert take(engine) == [], "planned as a periodic reconcile, it is a change now: it waits for a slot"
    finally:
        admin.close()
    assert unready(engine) <= 1, "the periodic reconcile's claim started the new generation's rollout past max_unready"


def test_held_marking_never_marks_what_another_scheduler_just_claimed(engine: Engine) -> None:
    names = settled(engine, 3)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=names[0])
    assert take(engine) == names[:1]
    finish(engine, names[:1])
    sql(engine, "UPDATE noops SET note = 'v3' WHERE name <> :n", n=names[0])
    holds = [{"name": "wave", "reason": "RolloutWave", "message": "full"}]
    # Scheduler B's claim of names[1] is committing while scheduler A (its claim done) marks what waits Held.
    other = engine.connect()
    claiming = other.begin()
    other.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('setpoint claims', 0))"))
    other.execute(
        text("""UPDATE statuses SET enqueued_at = now(), claimed_generation = generation, rollout_started_at = now()
                WHERE name = :n"""),
        {"n": names[1]},
    )
    marker = threading.Thread(target=held.mark_held, args=(engine, holds, []), daemon=True)
    marker.start()
    deadline = time.monotonic() + 10
    while not blocked(engine) and time.monotonic() < deadline:
        time.sleep(0.01)
    claiming.commit()
    other.close()
    marker.join(timeout=10)
    claimed = status(engine, names[1])
    assert not (claimed["enqueued_at"] is not None and claimed["phase"] == "Held"), "claimed, yet marked Held"
    assert take(engine) == [], "names[1] is working on v3 and holds the only slot"


def blocked(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%setpoint_hold%'"
        )
        return bool(conn.execute(text(waiting)).scalar())


def test_resume_lets_a_halted_rollout_go_on(engine: Engine) -> None:
    names = settled(engine, 2)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready, max_failures) VALUES ('one', '{Noop}', 1, 1)")
    sql(engine, "UPDATE noops SET note = 'v2'")
    assert take(engine) == names[:1]
    finish(engine, names[:1], phase="Failed")
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() + interval '1h' WHERE name = :n", n=names[0])
    assert take(engine) == [], "halted"
    assert policy_usage.resume(engine, "one")
    assert take(engine) == names[1:], "README: it goes on after `setpoint rollout resume`"


def test_an_owner_and_what_it_owns_in_one_wave_of_one_do_not_deadlock(engine: Engine) -> None:
    owner, part = settled(engine, 2)
    sql(engine, "INSERT INTO policies (name, max_unready) VALUES ('wave', 1)")
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=owner)
    assert take(engine) == [owner]
    # The owner's reconcile applies its owned row, and is not ready until that is (controllers/app.py: OwnedNotReady,
    # progressing: phase Progressing).
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=part)
    finish(engine, [owner], phase="Progressing")
    sql(
        engine,
        """UPDATE statuses SET conditions = '[{"type": "Ready", "status": "False", "reason": "OwnedNotReady"}]'
           WHERE name = :n""",
        n=owner,
    )
    assert take(engine) == [part], "the owned row never gets the slot its owner holds while waiting on it"


def test_claims_without_policies_do_not_take_turns(engine: Engine) -> None:
    """README: with no policy the claim is the statement it always was, after one read of the empty table."""
    other = engine.connect()
    turn = other.begin()
    other.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('setpoint claims', 0))"))
    try:
        done: list[int] = []
        claimer = threading.Thread(
            target=lambda: done.append(
                len(
                    claim.claim_due(engine, batch=10, default_interval_seconds=60, retry_window_s=8, running_limit_s=60)
                )
            ),
            daemon=True,
        )
        claimer.start()
        claimer.join(timeout=5)
        assert not claimer.is_alive(), "a claim with no policy waited for another scheduler's turn"
    finally:
        turn.rollback()
        other.close()


def test_the_upgrade_to_0020_leaves_no_drift_holding_a_slot_and_no_kind_that_matches_nothing(
    servers: tuple[str, str],
) -> None:
    with scratch_database(servers[0], "upgrade20") as url:
        alembic("downgrade", "0019", database_url=url)
        old = make_engine(url)
        try:
            names = noops(old, 2)
            # Under 0019: a change claimed (rollout_started_at set, never cleared then), ready at it, later degraded.
            sql(
                old,
                """UPDATE statuses SET claimed_generation = generation, rollout_started_at = now() - interval '1d',
                           observed_generation = generation, ready = false, phase = 'Degraded'""",
            )
            sql(old, "INSERT INTO policies (name, max_unready) VALUES ('wave', 1)")
            sql(
                old, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('few', '{noops}', 5)"
            )  # as the CLI says
        finally:
            old.dispose()
        alembic("upgrade", "head", database_url=url)
        new = make_engine(url)
        try:
            sql(new, "UPDATE noops SET note = 'v2' WHERE name = :n", n=names[0])
            assert names[0] in take(new), "README: drift holds no slot (the degraded one holds the only one)"
            with new.connect() as conn:
                kinds = conn.execute(text("SELECT kinds FROM policies WHERE name = 'few'")).scalar_one()
            assert kinds == ["Noop"], "a kind spelled as the CLI takes it, kept as it was: the policy matches nothing"
        finally:
            new.dispose()


def test_a_fifth_backlogged_scope_is_not_hidden_behind_four(engine: Engine) -> None:
    """README: a claim reads on past a scope that fills its window, so a backlog does not starve another scope."""
    for group in range(5):
        sql(
            engine,
            f"INSERT INTO policies (name, selector, max_in_flight) VALUES ('g{group}', :s, 100000)",
            s=f'{{"g": "{group}"}}',
        )
        noops(engine, 2_000 if group < 4 else 1, labels=f'{{"g": "{group}"}}', prefix=f"g{group}-")
    claimed = take(engine, batch=10)
    assert "g4-000" in claimed, "the fifth scope's one change waits behind the four backlogs"
