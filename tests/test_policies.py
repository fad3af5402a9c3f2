"""Policies in the scheduler's claim, statement by statement: what a claim takes, what it leaves, what it holds.

These run the real claim against a real PostgreSQL, with no worker: a "finished reconcile" is the status write a
worker makes (tests/test_policies_e2e.py runs the whole stack).
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from models.database import make_engine
from scheduler import policy_usage
from tests.claims import finish, fresh, noops, status, take
from tests.helpers import sql


@pytest.fixture
def engine(claims_db: Engine) -> Engine:
    return fresh(claims_db)


def test_without_policies_every_due_resource_is_claimed(engine: Engine) -> None:
    names = noops(engine, 30)
    assert take(engine) == names
    assert take(engine) == []


def test_max_in_flight_claims_only_what_the_scope_may_still_run(engine: Engine) -> None:
    sql(engine, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('three', '{Noop}', 3)")
    names = noops(engine, 10)
    first = take(engine)
    assert first == names[:3]
    assert take(engine) == [], "nothing more while three are in flight"
    finish(engine, first[:2])
    assert take(engine) == names[3:5], "two finished, two more start"


def test_a_resource_in_several_scopes_obeys_all_and_one_outside_every_scope_is_never_held(engine: Engine) -> None:
    sql(
        engine,
        """INSERT INTO policies (name, kinds, selector, max_in_flight) VALUES
               ('noops', '{Noop}', NULL, 4), ('web', NULL, '{"tier": "web"}', 2)""",
    )
    web = noops(engine, 5, '{"tier": "web", "team": "a"}', "web")
    noops(engine, 5, '{"tier": "db"}', "db")
    outside = [f"f{i}" for i in range(5)]
    sql(engine, "INSERT INTO flakies (name, counter_path) SELECT unnest(CAST(:n AS text[])), '/dev/null'", n=outside)
    claimed = take(engine)
    assert [n for n in claimed if n.startswith("web")] == web[:2], "web's limit of 2"
    assert len([n for n in claimed if n.startswith(("web", "db"))]) == 4, "the Noop kind's limit of 4"
    assert set(outside) <= set(claimed), "Flaky rows are in no policy's scope: all claimed at once"


def test_a_changed_label_moves_a_resource_into_a_scope(engine: Engine) -> None:
    sql(engine, """INSERT INTO policies (name, selector, max_in_flight) VALUES ('web', '{"tier": "web"}', 1)""")
    names = noops(engine, 3, '{"tier": "db"}')
    finish(engine, take(engine))
    sql(engine, """UPDATE noops SET labels = '{"tier": "web"}'""")
    assert status(engine, names[0])["labels"] == {"tier": "web"}, "labels copied into the status"
    assert len(take(engine)) == 1


def test_max_per_minute_spends_the_burst_then_refills_at_the_rate(engine: Engine) -> None:
    sql(engine, "INSERT INTO policies (name, max_per_minute, burst) VALUES ('slow', 60, 3)")
    noops(engine, 10)
    assert len(take(engine)) == 3, "the burst"
    assert take(engine) == [], "the bucket is empty"
    sql(engine, "UPDATE policy_statuses SET refilled_at = refilled_at - interval '2 seconds'")  # two seconds pass
    assert len(take(engine)) == 2, "60 a minute: one a second"


def test_the_default_burst_is_one_second_of_the_rate(engine: Engine) -> None:
    sql(engine, "INSERT INTO policies (name, max_per_minute) VALUES ('slow', 30)")
    noops(engine, 5)
    assert len(take(engine)) == 1
    sql(engine, "UPDATE policies SET max_per_minute = 600")  # an edit takes effect at the next claim
    sql(engine, "UPDATE policy_statuses SET refilled_at = refilled_at - interval '5 seconds'")
    assert len(take(engine)) == 4, "600 a minute: a bucket of 10, refilled"


def test_a_deleted_policy_holds_nothing_back_at_the_next_claim(engine: Engine) -> None:
    sql(engine, "INSERT INTO policies (name, max_in_flight) VALUES ('one', 1)")
    names = noops(engine, 4)
    assert len(take(engine)) == 1
    sql(engine, "DELETE FROM policies")
    assert len(take(engine)) == 3
    assert len(names) == 4


def test_a_lost_message_is_sent_again_even_when_the_scope_is_full(engine: Engine) -> None:
    sql(engine, "INSERT INTO policies (name, max_in_flight) VALUES ('one', 1)")
    noops(engine, 2)
    [first] = take(engine)
    # Its message never reached a worker, for longer than an interval: it already holds the one slot.
    sql(engine, "UPDATE statuses SET enqueued_at = now() - interval '2 minutes' WHERE name = :n", n=first)
    assert take(engine) == [first]


def test_a_rollout_moves_in_waves_of_max_unready_and_holds_the_rest(engine: Engine) -> None:
    names = noops(engine, 6)
    finish(engine, take(engine))  # all at generation 1, ready
    sql(engine, "INSERT INTO policies (name, kinds, max_unready) VALUES ('wave', '{Noop}', 2)")
    sql(engine, "UPDATE noops SET note = 'v2'")
    assert take(engine) == names[:2]
    held = status(engine, names[2])
    assert held["phase"] == "Held"
    [condition] = [c for c in held["conditions"] if c["type"] == "Held"]
    assert condition["policy"] == "wave" and condition["reason"] == "RolloutWave"
    assert "max_unready 2" in condition["message"]
    assert held["observed_generation"] == 1, "its real state is untouched: not even claimed"
    finish(engine, names[:1])
    assert take(engine) == names[2:3], "one ready at its new generation frees one slot"
    assert status(engine, names[2])["phase"] == "Pending", "claimed: no longer held"
    # A periodic reconcile of a resource at its current generation is no rollout: never held.
    finish(engine, [names[1], names[2]])
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=names[0])
    assert names[0] in take(engine)


def test_max_failures_halts_the_rollout_until_resumed_or_the_failing_rows_change(engine: Engine) -> None:
    names = noops(engine, 10)
    finish(engine, take(engine))
    sql(engine, "INSERT INTO policies (name, max_unready, max_failures) VALUES ('careful', 2, 1)")
    sql(engine, "UPDATE noops SET note = 'bad'")
    first = take(engine)
    assert first == names[:2]
    finish(engine, first[1:])
    finish(engine, first[:1], phase="Invalid")
    assert take(engine) == [], "halted after the first failure, though a slot is free"
    held = status(engine, names[5])
    [condition] = [c for c in held["conditions"] if c["type"] == "Held"]
    assert condition["reason"] == "RolloutHalted"
    assert f"Noop/{names[0]}" in condition["message"] and "setpoint rollout resume careful" in condition["message"]
    assert policy_usage.resume(engine, "careful")
    assert take(engine) == names[2:4], "resumed: the old failure neither counts nor holds a slot"
    finish(engine, names[2:3], phase="Failed")
    finish(engine, names[3:4])
    assert take(engine) == [], "a new failure halts it again"
    # The failing rows change (fixed): they no longer count as failures, and the rollout goes on.
    sql(engine, "UPDATE noops SET note = 'fixed' WHERE name = ANY(:n)", n=[names[0], names[2]])
    assert take(engine) == names[4:6], "two slots again, taken in the order the changes fell due"


CLAIM_WINDOW = 2_000
"""The due resources one window of candidates holds, in due order: scheduler/policies.py reads max(4 * batch, 2,000),
which is 2,000 for a batch of 500 or less, and reads on past a scope that fills it."""


def claims_until(engine: Engine, wanted: set[str], batch: int, most: int) -> int | None:
    """Claim as the scheduler's ticks do, with workers that finish each reconcile before the next tick, until every
    one of `wanted` has been claimed: how many claims that took (None: not within `most`)."""
    waiting = set(wanted)
    for claims in range(1, most + 1):
        claimed = take(engine, batch)
        finish(engine, claimed)
        waiting -= set(claimed)
        if not waiting:
            return claims
    return None


@pytest.mark.parametrize(
    ("backlog", "bulk_in_flight"),
    [
        pytest.param(50, None, id="backlog-within-the-window"),
        pytest.param(CLAIM_WINDOW + 6, None, id="backlog-beyond-the-window"),
        pytest.param(CLAIM_WINDOW + 6, 1, id="backlog-beyond-the-window-one-at-a-time"),
    ],
)
def test_fairness_each_kind_and_scope_gets_its_turn_within_one_batch(
    engine: Engine, backlog: int, bulk_in_flight: int | None
) -> None:
    """A backlog of due resources of one scope, all due before a few of another kind and of another scope: those few
    are claimed in the first claim all the same, with the workers finishing each reconcile before the next claim.

    The bound is one claim whatever the backlog's size: each batch round-robins between scopes, the batch (6) has
    room for the four late ones, and no limit they are under is reached. A bound that grew with the backlog would be
    the starvation the policies must not cause: a kind with 100,000 due resources, or a scope held to one reconcile at
    a time, making every other kind wait behind all of them. The smallest backlog that tests the bound at the edge
    of the claim's window is a window and a batch (2,006): still a full window of it after one claim has taken a
    batch."""
    batch = 6
    sql(engine, """INSERT INTO policies (name, selector, max_in_flight) VALUES ('web', '{"tier": "web"}', 1000)""")
    if bulk_in_flight is not None:
        sql(
            engine,
            """INSERT INTO policies (name, selector, max_in_flight) VALUES ('bulk', '{"tier": "bulk"}', :n)""",
            n=bulk_in_flight,
        )
    noops(engine, backlog, '{"tier": "bulk"}', "bulk")
    sql(engine, "INSERT INTO flakies (name, counter_path) VALUES ('late-a', '/dev/null'), ('late-b', '/dev/null')")
    late = {"late-a", "late-b", *noops(engine, 2, '{"tier": "web"}', "web")}
    took = claims_until(engine, late, batch, most=backlog)  # each claim takes one of the backlog
    assert took == 1, f"the late kind and scope waited {took} claims behind {backlog} due bulk noops"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ("('p', NULL, NULL, NULL, NULL, NULL)", "limit_given"),
        ("('p', 0, NULL, NULL, NULL, NULL)", "max_in_flight_positive"),
        ("('p', NULL, -5, NULL, NULL, NULL)", "max_per_minute_positive"),
        ("('p', 1, NULL, 3, NULL, NULL)", "burst_with_rate"),
        ("('p', NULL, NULL, NULL, 0, NULL)", "max_unready_positive"),
        ("('Bad Name', 1, NULL, NULL, NULL, NULL)", "name_format"),
    ],
)
def test_a_policy_that_makes_no_sense_is_refused_naming_the_rule(engine: Engine, values: str, field: str) -> None:
    with pytest.raises(IntegrityError, match=f"ck_policies_{field}"):
        sql(
            engine,
            f"INSERT INTO policies (name, max_in_flight, max_per_minute, burst, max_unready, max_failures) "
            f"VALUES {values}",
        )


def test_a_selector_must_be_an_object(engine: Engine) -> None:
    with pytest.raises(IntegrityError, match="ck_policies_selector_object"):
        sql(engine, """INSERT INTO policies (name, selector, max_in_flight) VALUES ('p', '["web"]', 1)""")


def test_the_metrics_count_what_each_policy_holds_back(engine: Engine, servers: tuple[str, str]) -> None:
    import redis

    from scheduler.metrics import FleetCollector
    from setpoint.settings import Settings

    names = noops(engine, 5)
    finish(engine, take(engine))
    sql(engine, "INSERT INTO policies (name, max_unready, max_failures) VALUES ('wave', 1, 1)")
    sql(engine, "INSERT INTO policies (name, kinds, max_in_flight) VALUES ('one', '{Noop}', 1)")
    sql(engine, "UPDATE noops SET note = 'v2' WHERE name <> :n", n=names[0])
    take(engine)
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE name = :n", n=names[0])  # due, not a rollout
    settings = Settings(database_url=str(engine.url), broker_url=servers[1])
    fleet = FleetCollector(engine, redis.Redis.from_url(servers[1]), settings, leading=lambda: True)
    fleet.refresh()
    samples = {
        (family.name, tuple(sample.labels.values())): sample.value
        for family in fleet.collect()
        for sample in family.samples
    }
    assert samples[("setpoint_policy_held_resources", ("wave", "rollout"))] == 3, "one started, three held"
    assert samples[("setpoint_policy_held_resources", ("one", "limit"))] == 1, "the due one waits for the slot"
    assert samples[("setpoint_policy_halted", ("wave",))] == 0


def test_the_scheduler_role_claims_and_holds_but_cannot_change_a_policy_or_a_phase(engine: Engine) -> None:
    import uuid

    import psycopg
    from psycopg import sql as pgsql
    from sqlalchemy.exc import ProgrammingError

    from models.database import libpq_url

    user, password = f"setpoint_scheduler_test_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    url = engine.url.render_as_string(hide_password=False)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE setpoint_scheduler").format(
                pgsql.Identifier(user), pgsql.Literal(password)
            )
        )
    scheduler = make_engine(engine.url.set(username=user, password=password).render_as_string(hide_password=False))
    try:
        names = noops(engine, 4)
        finish(engine, take(engine))
        sql(engine, "INSERT INTO policies (name, max_unready, max_per_minute) VALUES ('wave', 1, 600)")
        sql(engine, "UPDATE noops SET note = 'v2'")
        assert take(scheduler) == names[:1]
        assert status(engine, names[1])["phase"] == "Held"
        for statement in (
            "UPDATE policies SET max_unready = 100",
            "UPDATE policies SET resumed_at = now()",
            "UPDATE statuses SET phase = 'Ready'",
            "DELETE FROM policies",
        ):
            with pytest.raises(ProgrammingError, match="permission denied"):
                sql(scheduler, statement)
    finally:
        scheduler.dispose()
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(user)))


def test_a_scope_backing_off_starts_nothing_until_then(engine: Engine) -> None:
    sql(engine, "INSERT INTO policies (name, kinds, max_per_minute) VALUES ('api', '{Noop}', 6000)")
    sql(engine, "INSERT INTO policy_statuses (name, backoff_until) VALUES ('api', now() + interval '1 hour')")
    noops(engine, 3)
    assert take(engine) == []
    sql(engine, "UPDATE policy_statuses SET backoff_until = now() - interval '1 second'")
    assert len(take(engine)) == 3
