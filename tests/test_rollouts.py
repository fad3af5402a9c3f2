"""Rollouts under policies, claim by claim: what holds a slot of max_unready and what does not, deletions in
rollouts, what a policy leaves behind, and that an admin's open transaction holds no claim up.

Like tests/test_policies.py, these run the real claim on a real PostgreSQL with no worker: a finished reconcile is
the status write a worker makes (`finish`); a finished teardown is setpoint_teardown_done, as the worker calls it.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, ProgrammingError

from scheduler import held, policy_usage
from tests.claims import finish, fresh, settled, status, take, torn_down
from tests.helpers import logged_in_as_roles, sql


@pytest.fixture
def engine(claims_db: Engine) -> Engine:
    return fresh(claims_db)


def test_a_resource_that_degrades_after_its_rollout_holds_no_slot(engine: Engine) -> None:
    names = settled(engine, 4)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    # Ready at generation 1, then drifted and could not be fixed: drift, not a rollout.
    sql(engine, "UPDATE statuses SET ready = false, phase = 'Degraded' WHERE name = :n", n=names[0])
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name <> :n", n=names[0])
    assert take(engine) == names[1:2], "the degraded one holds no slot: the rollout starts"
    finish(engine, names[1:2], phase="Degraded")
    assert take(engine) == [], "one that never got ready at its new generation holds its slot"


def test_a_paused_resource_changes_nothing_and_holds_no_slot(engine: Engine) -> None:
    names = settled(engine, 3)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2'")
    assert take(engine) == names[:1]
    # What the worker records of a paused resource whose desired state changed: drift reported, not corrected.
    paused = """UPDATE statuses SET enqueued_at = NULL, phase = 'Drifted', ready = false,
                    observed_generation = generation, next_reconcile_at = now() + interval '1h',
                    conditions = '[{"type": "Ready", "status": "False", "reason": "Paused"}]'
                WHERE name = :n"""
    sql(engine, paused, n=names[0])
    assert take(engine) == names[1:2], "paused, it changed nothing: its slot goes to the next one"


def test_a_failure_at_an_old_generation_never_halts_a_rollout(engine: Engine) -> None:
    names = settled(engine, 3)
    sql(engine, "UPDATE statuses SET ready = false, phase = 'Failed' WHERE name = :n", n=names[0])
    sql(engine, "INSERT INTO policies (name, kinds, max_unready, max_failures) VALUES ('careful', '{Noop}', 5, 1)")
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name <> :n", n=names[0])
    assert take(engine) == names[1:], "a resource failing at the generation it was ready at is not the rollout's"


def test_a_mass_delete_is_a_rollout_too(engine: Engine) -> None:
    names = settled(engine, 5)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 2)")
    sql(engine, "DELETE FROM noops")
    assert take(engine) == names[:2], "one DELETE of every row starts two teardowns"
    held = status(engine, names[2])
    assert held["phase"] == "Held" and held["deleted_at"] is not None
    [condition] = [c for c in held["conditions"] if c["type"] == "Held"]
    assert condition["policy"] == "wave" and "deletion" in condition["message"]
    assert take(engine) == [], "the two still tearing down hold both slots"
    torn_down(engine, names[:1])
    assert take(engine) == names[2:3], "one gone frees one slot"
    assert status(engine, names[2])["phase"] == "Deleting", "claimed: no longer held, and still a deletion"


def test_a_failing_teardown_counts_towards_max_failures(engine: Engine) -> None:
    names = settled(engine, 4)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready, max_failures) VALUES ('careful', '{Noop}', 1, 1)")
    sql(engine, "DELETE FROM noops")
    assert take(engine) == names[:1]
    sql(
        engine,
        """UPDATE statuses SET enqueued_at = NULL, consecutive_failures = 1, next_reconcile_at = now() + interval '1h'
           WHERE name = :n""",
        n=names[0],
    )
    assert take(engine) == []
    [condition] = [c for c in status(engine, names[1])["conditions"] if c["type"] == "Held"]
    assert condition["reason"] == "RolloutHalted" and f"Noop/{names[0]}" in condition["message"]


def test_waiting_for_a_dependency_gives_the_slot_back_and_takes_one_again_to_act(engine: Engine) -> None:
    names = settled(engine, 3)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2'")
    assert take(engine) == names[:1]
    # It found a dependency not ready: it observes and waits, changing nothing.
    waits = """UPDATE statuses SET enqueued_at = NULL, phase = 'Waiting', ready = false,
                   observed_generation = generation, next_reconcile_at = now() + interval '1h' WHERE name = :n"""
    sql(engine, waits, n=names[0])
    assert take(engine) == names[1:2], "waiting, it holds no slot: the next one starts"
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=names[0])  # the dependency is ready
    assert take(engine) == [], "to act now it needs a slot again, and the one it gave back is taken"
    assert status(engine, names[0])["phase"] == "Held"
    finish(engine, names[1:2])
    assert take(engine) == names[2:], "slots go in due order: the third change fell due before the wake-up"
    finish(engine, names[2:])
    assert take(engine) == names[:1]


def test_what_a_deleted_policy_held_is_pending_once_claimed(engine: Engine) -> None:
    names = settled(engine, 3)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2'")
    take(engine)
    assert status(engine, names[2])["phase"] == "Held"
    sql(engine, "DELETE FROM policies")
    assert take(engine) == names[1:]
    released = status(engine, names[2])
    assert released["phase"] == "Pending" and not [c for c in released["conditions"] if c["type"] == "Held"]


def test_held_marking_is_bounded_per_claim(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    settled(engine, 8)
    monkeypatch.setattr(held, "HELD_PER_CLAIM", 3)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2'")

    def marked() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM statuses WHERE phase = 'Held'")).scalar_one())

    take(engine)
    assert marked() == 3, "one claim marks at most HELD_PER_CLAIM"
    take(engine)
    take(engine)
    assert marked() == 7, "the rest at the next claims: every change but the one started"


def test_an_admins_open_transaction_on_a_policy_holds_no_claim_up(engine: Engine) -> None:
    names = settled(engine, 3)
    sql(engine, "INSERT INTO policies (name, kinds, max_in_flight, max_per_minute) VALUES ('web', '{Noop}', 2, 600)")
    sql(engine, "UPDATE statuses SET next_reconcile_at = now()")
    admin = engine.connect()
    transaction = admin.begin()
    admin.execute(text("UPDATE policies SET max_in_flight = 1"))  # not committed
    try:
        claimed: list[list[str]] = []
        claimer = threading.Thread(target=lambda: claimed.append(take(engine)), daemon=True)
        claimer.start()
        claimer.join(timeout=10)
        assert not claimer.is_alive(), "the claim waited for the admin's transaction"
        assert claimed == [names[:2]], "it obeyed the last committed limit"
    finally:
        transaction.rollback()
        admin.close()


def test_kinds_are_stored_as_the_kinds_names_and_an_unknown_one_is_refused(engine: Engine) -> None:
    sql(engine, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('p', '{noops, Noop, \" noop \"}', 1)")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT kinds FROM policies")).scalar_one() == ["Noop"]
    with pytest.raises(IntegrityError, match="kinds: 'Nope' is not a kind; known kinds: .*Noop"):
        sql(engine, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('q', '{Nope}', 1)")
    many = "{" + ",".join(["Noop"] * 65) + "}"
    with pytest.raises(IntegrityError, match="kinds: 65 kinds given, at most 64"):
        sql(engine, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('r', CAST(:k AS text[]), 1)", k=many)


def test_each_role_reaches_only_what_it_needs_of_policies(engine: Engine) -> None:
    names = settled(engine, 1)
    sql(engine, "INSERT INTO policies (name, kinds, max_per_minute) VALUES ('api', '{Noop}', 60)")
    url = engine.url.render_as_string(hide_password=False)
    with logged_in_as_roles(url) as roles:
        with roles["setpoint_worker"].begin() as conn:  # a target said 429: the worker backs the scope off
            assert conn.execute(text("SELECT setpoint_back_off('Noop', :n, 30)"), {"n": names[0]}).scalar() == 1
        for role in ("setpoint_worker", "setpoint_api"):
            with pytest.raises(ProgrammingError, match="permission denied"):
                sql(roles[role], "SELECT name FROM policies")
            with pytest.raises(ProgrammingError, match="permission denied"):
                sql(roles[role], "UPDATE policies SET resumed_at = now()")
        sql(engine, "UPDATE statuses SET next_reconcile_at = now()")
        assert take(roles["setpoint_scheduler"]) == [], "the scheduler obeys the back-off, as its own role"
        sql(engine, "UPDATE policy_statuses SET backoff_until = NULL")  # the admin lifts it
        assert take(roles["setpoint_scheduler"]) == names
        with roles["setpoint_scheduler"].connect() as conn:
            assert len(policy_usage.usage(conn)) == 1, "and reads what each policy holds back, for its metrics"
