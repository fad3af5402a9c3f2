"""Rollouts and what is already on its way: a periodic reconcile in flight when a change lands, a lost message freed
then delivered late, a message queued to a silent node; and what resuming, a policy committed mid-claim, an unhealthy
change and the upgrade to 0020 leave. Each would let a change past a policy, or hold a slot forever, without what it
tests (each was found failing by a review).

They run the real claim on a real PostgreSQL and, where a message reaches a worker, the worker's real reconcile
in-process (tests/kinds.py's Noop controller), as tests/test_roles.py does.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

import tests.kinds  # noqa: F401  (registers the Noop controller)
from models.database import make_engine
from scheduler import claim, policies, policy_usage
from setpoint.settings import Settings
from tests.claims import finish, fresh, settled, status, take
from tests.conftest import alembic, scratch_database
from tests.helpers import sql
from worker import runtime


@pytest.fixture
def engine(claims_db: Engine) -> Engine:
    return fresh(claims_db)


def deliver(engine: Engine, name: str, claim_number: int, tmp_path: Path) -> str:
    """A worker receives the message of claim `claim_number` for Noop `name` and reconciles it."""
    settings = Settings(state_dir=str(tmp_path / "state"), worker_metrics_port=None)
    request = runtime.Request("Noop", name, claim=claim_number)
    done = runtime.reconcile(
        request, engine=engine, settings=settings, now=lambda: datetime.now(UTC), rng=random.Random(0)
    )
    return done.outcome


def usage(engine: Engine) -> policy_usage.Usage:
    with engine.begin() as conn:
        [found] = policy_usage.usage(conn)
    return found


def test_a_periodic_reconcile_in_flight_when_the_change_lands_does_not_apply_it_past_max_unready(
    engine: Engine, tmp_path: Path
) -> None:
    first, second = settled(engine, 2)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=first)
    assert take(engine) == [first], "the change takes the only slot"
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=second)
    assert take(engine) == [second], "a periodic reconcile needs no slot"
    queued = status(engine, second)["claim"]
    # The admin's mass UPDATE reaches `second` while its periodic message is in the queue.
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=second)
    deliver(engine, second, queued, tmp_path)
    assert status(engine, second)["observed_generation"] == 1, (
        "README: the others keep their old real state untouched; yet a message claimed before the change applied "
        "the new generation while `first` held the only slot of max_unready 1 (and a failure would not count "
        "towards max_failures: rollout_started_at stays NULL)"
    )


def test_a_freed_lost_message_is_dropped_by_the_worker_when_it_arrives_late(engine: Engine, tmp_path: Path) -> None:
    first, second = settled(engine, 2)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=first)
    assert take(engine) == [first]
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=second)
    assert take(engine) == [second]
    queued = status(engine, second)["claim"]
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name = :n", n=second)
    # Its message sat in a backlogged queue for longer than an interval: the claim frees it (_FREE_SUPERSEDED) and
    # holds the change back (the only slot is taken) ...
    sql(engine, "UPDATE statuses SET enqueued_at = now() - interval '2 hours' WHERE name = :n", n=second)
    assert take(engine) == []
    assert status(engine, second)["enqueued_at"] is None
    # ... then the message is delivered after all.
    outcome = deliver(engine, second, queued, tmp_path)
    assert outcome == "superseded", (
        f"the freed message still holds the resource's claim ({outcome}): it reconciled the held change, counted "
        "neither in flight nor as working"
    )


def test_a_silent_node_does_not_hold_a_slot_of_max_in_flight_forever(engine: Engine) -> None:
    gone, other = settled(engine, 2)
    sql(engine, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('few', '{Noop}', 1)")
    sql(engine, "DELETE FROM nodes WHERE name = 'gone'")
    sql(engine, "INSERT INTO nodes (name, started_at, last_seen_at) VALUES ('gone', now(), now())")
    sql(engine, "UPDATE statuses SET node = 'gone' WHERE name = :n", n=gone)  # a host-local resource
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=gone)
    assert take(engine) == [gone]
    # Its host has been silent for a day (no heartbeat): the message waits in that node's queue, never lost.
    sql(engine, "UPDATE statuses SET enqueued_at = now() - interval '1 day' WHERE name = :n", n=gone)
    sql(engine, "UPDATE nodes SET last_seen_at = now() - interval '1 day' WHERE name = 'gone'")
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=other)
    assert take(engine) == [other], (
        "one dead host's queued message holds the scope's only reconcile slot forever: nothing else starts"
    )


def test_resuming_lets_no_more_than_max_unready_work_at_once(engine: Engine) -> None:
    names = settled(engine, 3)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready, max_failures) VALUES ('one', '{Noop}', 1, 1)")
    sql(engine, "UPDATE noops SET note = 'v2'")
    assert take(engine) == names[:1]
    finish(engine, names[:1], phase="Failed")
    assert take(engine) == [], "halted"
    assert policy_usage.resume(engine, "one")
    assert take(engine) == names[1:2], "it goes on with the slot the failure gave back"
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=names[0])  # the failure's retry
    take(engine)
    assert usage(engine).unready <= 1, (
        "the resumed failure retries its new generation without a slot, alongside the one that took it: "
        f"{usage(engine).unready} working at once under max_unready 1"
    )


def test_a_policy_committed_with_its_change_between_the_claims_statements_is_obeyed(engine: Engine) -> None:
    """One scheduler: the claim reads `policies` (empty) in one statement and claims in the next (READ COMMITTED:
    a newer snapshot). An admin who commits the policy and the mass change in one transaction between them sees
    the whole batch start (the change is due in the claim when the admin's transaction began before it)."""
    names = settled(engine, 5)
    params = {"batch": 500, "default_interval": 60, "retry_window": 8, "running_limit": 600, "node_silent": 60}
    admin = engine.connect()
    editing = admin.begin()  # BEGIN; INSERT INTO policies ...; UPDATE noops ...; COMMIT (as one change)
    admin.execute(text("INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 1)"))
    admin.execute(text("UPDATE noops SET note = 'v2'"))
    try:
        with engine.begin() as conn:  # claim_due, statement by statement
            assert not policies.names(conn)
            editing.commit()
            conn.execute(claim._CLAIM, params).all()
    finally:
        admin.close()
    started = [n for n in names if status(engine, n)["rollout_started_at"] is not None]
    assert len(started) <= 1, f"{len(started)} changes started under max_unready 1, committed with the change"


def test_a_rollout_whose_change_leaves_a_resource_degraded_can_be_resumed(engine: Engine) -> None:
    """A new generation that applies but leaves the resource unhealthy (phase Degraded: a health check failing)."""
    names = settled(engine, 2)
    sql(engine, "INSERT INTO policies (name, kinds, max_unready, max_failures) VALUES ('one', '{Noop}', 1, 1)")
    sql(engine, "UPDATE noops SET note = 'v2'")
    assert take(engine) == names[:1]
    finish(engine, names[:1], phase="Degraded")
    assert take(engine) == [], "the degraded one holds the only slot"
    assert usage(engine).halted, "a change that leaves it unhealthy is a failure: the rollout halts"
    assert policy_usage.resume(engine, "one")
    assert take(engine) == names[1:], "resumed: the degraded one's slot is free again"


def test_the_upgrade_to_0020_takes_a_policy_that_0019_accepted(servers: tuple[str, str]) -> None:
    """0019 took any number of kinds (duplicates and spellings too); 0020 adds its 64-kinds CHECK before it
    canonicalises (and so de-duplicates) them, and the upgrade fails on the admin's data."""
    with scratch_database(servers[0], "upgrade20kinds") as url:
        alembic("downgrade", "0019", database_url=url)
        old = make_engine(url)
        try:
            spelled = ["Noop", "noop", "noops"] * 22  # 66 spellings of one kind
            sql(old, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('few', :k, 5)", k=spelled)
        finally:
            old.dispose()
        alembic("upgrade", "head", database_url=url)
        new = make_engine(url)
        try:
            with new.connect() as conn:
                assert conn.execute(text("SELECT kinds FROM policies")).scalar_one() == ["Noop"]
        finally:
            new.dispose()
