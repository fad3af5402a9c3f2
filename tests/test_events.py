"""Events: one per transition a person would want to know about, never one per reconcile.

Through the real scheduler and worker (the session's stack) and real files: a new file is Ready, a tampered one
DriftCorrected exactly once, a bad row Invalid then Recovered once fixed, a flaky one Failed once however often
it is retried, a deleted one Deleted; a run of no-op reconciles makes none. The statuses triggers' own rules
(NodeLost, sizes, the roles' rights) are checked in SQL, and retention on a database of its own.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError

from models.database import make_engine
from resources import events
from scheduler import retention
from tests.conftest import scratch_database, wait_for
from tests.helpers import logged_in_as_roles, ready_at, runs, settled, sql, status, unwatched
from tests.test_secret_leaks import condition, insert_workload, secret  # noqa: F401 - a fixture

HOUR = 3600


def of(engine: Engine, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Every event of the resource named `name`, oldest first (publishing what waits first, as readers do)."""
    return events.recent(engine, events.Filter(kinds=(kind,) if kind else (), names=(name,)), limit=1000)


def types(engine: Engine, name: str, kind: str | None = None) -> list[str]:
    return [event["type"] for event in of(engine, name, kind)]


def runs_count(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs WHERE name = :n"), {"n": name}).scalar_one())


def managed_file(engine: Engine, name: str, path: Path, content: str = "desired\n") -> None:
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, :c, :i)",
        n=name,
        p=str(path),
        c=content,
        i=HOUR,
    )
    wait_for(lambda: ready_at(engine, name, 1), 20, "file written")
    wait_for(lambda: settled(engine, name), 10, "no reconcile pending")


def test_a_new_file_makes_one_ready_event(stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path) -> None:
    managed_file(engine, unique, tmp_path / "motd")
    [ready] = of(engine, unique)
    assert ready["type"] == "Ready" and ready["kind"] == "File" and ready["generation"] == 1
    assert ready["reason"] == "Applied" and str(tmp_path / "motd") in ready["message"]
    assert ready["uid"] == str(status(engine, unique)["uid"])  # type: ignore[index]


def test_a_tampered_file_makes_exactly_one_drift_corrected_event_naming_what_differed(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    target = tmp_path / "app.conf"
    managed_file(engine, unique, target)
    edited = tmp_path / ".app.conf.swp"
    edited.write_text("hot fix at 2 a.m.\n")
    os.replace(edited, target)  # one change, as an editor saves
    # The watch heals it at once; a reconcile asked for by hand covers a host without inotify (it finds nothing).
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE kind = 'File' AND name = :n", n=unique)
    wait_for(lambda: target.read_text() == "desired\n", 10, "content healed")
    wait_for(lambda: settled(engine, unique), 10, "no reconcile pending")
    assert types(engine, unique) == ["Ready", "DriftCorrected"], "\n".join(
        [f"{e['at']} {e['type']} {e['message']}" for e in of(engine, unique)]
        + [f"{r['started_at']} {r['outcome']} {r['actions']} {r['error']}" for r in runs(engine, unique)]
    )
    corrected = of(engine, unique)[-1]
    assert corrected["details"]["drift"] == [{"change": f"write 8 bytes to {target}"}], corrected
    assert corrected["message"] == f"drift corrected: write 8 bytes to {target}"


def test_a_paused_file_tampered_with_makes_one_drifted_event_saying_what_differs(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    target = tmp_path / "paused.conf"
    managed_file(engine, unique, target)
    sql(engine, "UPDATE files SET paused = true WHERE name = :n", n=unique)
    wait_for(lambda: ready_at(engine, unique, 2), 20, "generation 2 (paused) observed")
    target.write_text("left alone\n")
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE kind = 'File' AND name = :n", n=unique)
    wait_for(lambda: "Drifted" in types(engine, unique), 20, "a Drifted event")
    wait_for(lambda: settled(engine, unique), 10, "no reconcile pending")
    assert types(engine, unique) == ["Ready", "Ready", "Drifted"]
    drifted = of(engine, unique)[-1]
    assert drifted["details"]["drift"] == [{"change": f"write 8 bytes to {target}"}]
    assert drifted["reason"] == "Paused" and "drift left uncorrected" in drifted["message"]
    assert target.read_text() == "left alone\n"


def test_a_file_waiting_for_its_secret_says_so_once_then_ready_without_the_value(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    target, secret_name, value = tmp_path / "app.conf", f"{unique}-pw", f"s3cr3t-{uuid.uuid4().hex}"
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, :c, :i)",
        n=unique,
        p=str(target),
        c=f"password = {{{{ Secret/{secret_name} }}}}\n",
        i=HOUR,
    )
    wait_for(lambda: types(engine, unique) == ["Waiting"], 20, "a Waiting event")
    [waiting] = of(engine, unique)
    assert waiting["reason"] == "DependencyMissing" and f"Secret/{secret_name}" in waiting["message"], waiting
    sql(engine, "UPDATE files SET interval_seconds = :i WHERE name = :n", n=unique, i=HOUR - 1)  # waits again
    wait_for(lambda: ready_at(engine, unique, 1) is None and status(engine, unique)["observed_generation"] == 2, 20)  # type: ignore[index]
    sql(engine, "INSERT INTO secrets (name, value) VALUES (:n, :v)", n=secret_name, v=value)
    try:
        wait_for(lambda: target.exists() and value in target.read_text(), 20, "the file written with its secret")
        wait_for(lambda: types(engine, unique)[-1:] == ["Ready"], 10, "a Ready event")
        assert types(engine, unique) == ["Waiting", "Waiting", "Ready"], "again at generation 2, then ready"
        assert value not in json.dumps(of(engine, unique))
    finally:
        sql(engine, "DELETE FROM files WHERE name = :n", n=unique)
        wait_for(lambda: status(engine, unique) is None, 20, "teardown done")
        sql(engine, "DELETE FROM secrets WHERE name = :n", n=secret_name)


def test_no_op_reconciles_make_no_event(stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path) -> None:
    managed_file(engine, unique, tmp_path / "quiet")
    for _ in range(5):
        done = runs_count(engine, unique)
        sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE kind = 'File' AND name = :n", n=unique)
        wait_for(lambda d=done: runs_count(engine, unique) > d, 10, "one more reconcile")  # type: ignore[misc]
    assert types(engine, unique) == ["Ready"]


def test_an_invalid_row_is_invalid_once_then_recovered_once_fixed(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    sql(
        engine,
        "INSERT INTO files (name, path, interval_seconds) VALUES (:n, :p, :i)",
        n=unique,
        p=str(tmp_path),
        i=HOUR,
    )
    wait_for(lambda: types(engine, unique) == ["Invalid"], 20, "an Invalid event")
    [invalid] = of(engine, unique)
    assert "is a folder" in invalid["message"], invalid
    sql(engine, "UPDATE files SET path = :p WHERE name = :n", n=unique, p=str(tmp_path / "fixed"))
    wait_for(lambda: ready_at(engine, unique, 2), 20, "the fixed row ready")
    wait_for(lambda: settled(engine, unique), 10, "no reconcile pending")
    assert types(engine, unique) == ["Invalid", "Recovered"]
    recovered = of(engine, unique)[-1]
    assert recovered["generation"] == 2 and recovered["message"].startswith("recovered: generation 2 applied")


def test_a_failure_is_one_event_however_often_it_is_retried(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    counter = tmp_path / "attempts"
    sql(
        engine,
        "INSERT INTO flakies (name, counter_path, fail_times, interval_seconds) VALUES (:n, :p, 4, :i)",
        n=unique,
        p=str(counter),
        i=HOUR,
    )
    wait_for(lambda: ready_at(engine, unique, 1, "Flaky"), 60, "ready after four failures")
    assert int(counter.read_text()) == 5, "it failed four times, each retried"
    found = of(engine, unique, "Flaky")
    assert [e["type"] for e in found] == ["Failed", "Recovered"], found
    assert found[0]["message"] == "TransientError: simulated failure 1" and found[0]["reason"] == "ReconcileError"


def test_a_deleted_file_makes_a_deleted_event_once_torn_down(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    target = tmp_path / "gone"
    managed_file(engine, unique, target)
    sql(engine, "DELETE FROM files WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique) is None, 20, "teardown done")
    assert not target.exists()
    assert types(engine, unique) == ["Ready", "Deleted"]
    assert of(engine, unique)[-1]["reason"] == "TornDown"


def test_no_secret_value_in_the_events_of_a_failing_workload(
    stack: dict[str, str],
    engine: Engine,
    unique: str,
    secret: tuple[str, str],  # noqa: F811 - the fixture imported above
) -> None:
    name, value = secret
    failing = f"sh -c 'echo \"cannot log in with {{{{ Secret/{name} }}}} $DB_PASSWORD\"; exit 3'"
    insert_workload(engine, unique, failing, {"DB_PASSWORD": f"{{{{ Secret/{name} }}}}"})

    def said() -> list[dict[str, Any]]:
        found = of(engine, unique, "Workload")
        return found if any("***" in (e["message"] or "") for e in found) else []

    found = wait_for(said, 30, "an event quoting the replica's last words, masked")
    assert value not in json.dumps(found), found
    with engine.connect() as conn:
        leaked = conn.execute(
            text("SELECT count(*) FROM events AS e WHERE strpos(e::text, :v) > 0"), {"v": value}
        ).scalar_one()
    assert leaked == 0


# The triggers' rules, in SQL: each test's transaction is rolled back, so the stack never sees its rows.


def inbox(conn: Any, name: str) -> list[dict[str, Any]]:
    rows = conn.execute(text("SELECT * FROM event_inbox WHERE name = :n ORDER BY seq"), {"n": name}).mappings()
    return [dict(row) for row in rows]


READY = json.dumps([{"type": "Ready", "status": "True", "reason": "InSync", "message": "generation 1 in sync"}])


def test_a_silent_node_makes_one_node_lost_event(engine: Engine, unique: str, tmp_path: Path) -> None:
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text("INSERT INTO files (name, path) VALUES (:n, :p)"), {"n": unique, "p": str(tmp_path / "f")})
        conn.execute(
            text(
                "UPDATE statuses SET ready = true, phase = 'Ready', observed_generation = 1, node = :node, "
                "conditions = CAST(:c AS jsonb) WHERE name = :n"
            ),
            {"n": unique, "node": f"gone-{unique}", "c": READY},
        )
        for _ in range(2):
            conn.execute(text("SELECT setpoint_mark_nodes_lost(60)"))
        made = inbox(conn, unique)
        transaction.rollback()
    assert [e["type"] for e in made] == ["Ready", "NodeLost"]
    assert f"node gone-{unique} has never been seen" in made[-1]["message"]


def condition_json(reason: str, ready: bool) -> str:
    return json.dumps([{"type": "Ready", "status": str(ready), "reason": reason, "message": reason.lower()}])


def test_a_crash_loop_is_said_once_not_at_every_restart(engine: Engine, unique: str, tmp_path: Path) -> None:
    """Degraded, Progressing (a restart), Degraded again...: one NotReady; ready again, then degraded again: news."""
    write = text(
        "UPDATE statuses SET phase = :phase, ready = :ready, observed_generation = 1, last_reconcile_at = now(), "
        "conditions = CAST(:c AS jsonb) WHERE name = :n"
    )
    steps = [("Progressing", "Progressing")] + [("Degraded", "CrashLoopBackOff"), ("Progressing", "Progressing")] * 3
    steps += [("Ready", "Running"), ("Degraded", "CrashLoopBackOff"), ("Progressing", "Progressing")]
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text("INSERT INTO files (name, path) VALUES (:n, :p)"), {"n": unique, "p": str(tmp_path / "f")})
        for phase, reason in steps:
            ready = phase == "Ready"
            conn.execute(write, {"n": unique, "phase": phase, "ready": ready, "c": condition_json(reason, ready)})
        made = [(e["type"], e["reason"]) for e in inbox(conn, unique)]
        transaction.rollback()
    assert made == [
        ("NotReady", "CrashLoopBackOff"),
        ("Ready", "Running"),
        ("NotReady", "CrashLoopBackOff"),
    ]


def test_event_messages_and_drift_are_bounded(engine: Engine, unique: str, tmp_path: Path) -> None:
    """A controller's drift may quote what it would write: an event keeps 20 entries of 300 characters at most."""
    drift = json.dumps([{"change": f"write {'x' * 10_000} ({i})"} for i in range(50)])
    paused = json.dumps([{"type": "Ready", "status": "False", "reason": "Paused", "message": "y" * 10_000}])
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text("INSERT INTO files (name, path) VALUES (:n, :p)"), {"n": unique, "p": str(tmp_path / "f")})
        conn.execute(
            text(
                "UPDATE statuses SET phase = 'Drifted', observed_generation = 1, drift = CAST(:d AS jsonb), "
                "conditions = CAST(:c AS jsonb) WHERE name = :n"
            ),
            {"n": unique, "d": drift, "c": paused},
        )
        [drifted] = inbox(conn, unique)
        transaction.rollback()
    assert drifted["type"] == "Drifted" and len(drifted["message"]) == 1000
    assert len(drifted["details"]["drift"]) == 20
    assert all(len(d["change"]) == 300 for d in drifted["details"]["drift"])


@pytest.fixture(scope="module")
def role_engines(database_url: str) -> Iterator[dict[str, Engine]]:
    with logged_in_as_roles(database_url) as engines:
        yield engines


def test_each_role_does_its_part_of_events_and_no_more(
    engine: Engine, role_engines: dict[str, Engine], unique: str, tmp_path: Path
) -> None:
    unwatched(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", unique, p=str(tmp_path / "f"))
    # The worker writes a status: the trigger records the event for it (the worker has no right on events).
    sql(
        role_engines["setpoint_worker"],
        "UPDATE statuses SET ready = true, phase = 'Ready', observed_generation = 1, conditions = CAST(:c AS jsonb) "
        "WHERE kind = 'File' AND name = :n",
        n=unique,
        c=READY,
    )
    with pytest.raises(ProgrammingError, match="permission denied"):
        sql(role_engines["setpoint_worker"], "SELECT setpoint_publish_events()")
    # The API publishes and reads; it may not write events.
    assert [e["type"] for e in of(role_engines["setpoint_api"], unique)] == ["Ready"]
    with pytest.raises(ProgrammingError, match="permission denied"):
        sql(role_engines["setpoint_api"], "DELETE FROM events WHERE name = :n", n=unique)
    # The scheduler publishes and prunes (nothing here is old enough to go).
    retention.prune_events(role_engines["setpoint_scheduler"], kept=1_000_000, days=14)
    assert types(engine, unique) == ["Ready"]


def test_events_are_pruned_by_age_and_by_count(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], "events") as url:
        scratch = make_engine(url)
        try:
            sql(
                scratch,
                "INSERT INTO events (id, at, kind, name, type) SELECT nextval('events_id_seq'), "
                "now() - make_interval(days => :age), 'File', 'f' || i, 'Ready' FROM generate_series(1, :count) AS i",
                age=30,
                count=5,
            )
            sql(
                scratch,
                "INSERT INTO events (id, kind, name, type) SELECT nextval('events_id_seq'), 'File', 'g' || i, "
                "'Ready' FROM generate_series(1, 300) AS i",
            )
            # one still in the inbox: housekeeping publishes it, so it is counted (and kept: it is the newest)
            sql(scratch, "INSERT INTO event_inbox (kind, name, type) VALUES ('File', 'newest', 'Ready')")
            assert retention.prune_events(scratch, kept=200, days=14) == 5 + 101
            left = events.recent(scratch, limit=1000)
            assert len(left) == 200 and left[-1]["name"] == "newest" and left[0]["name"] == "g102"
        finally:
            scratch.dispose()


def test_a_reader_gets_what_it_missed_page_by_page_in_order(engine: Engine, unique: str) -> None:
    """A burst is read a page at a time (never the whole of it in one list), oldest first, and the cursor moves past
    events the filter leaves out."""
    start = events.head(engine)
    sql(
        engine,
        "INSERT INTO event_inbox (kind, name, type, message) SELECT 'File', :n, 'Ready', 'burst ' || i "
        "FROM generate_series(1, 5) AS i",
        n=unique,
    )
    sql(engine, "INSERT INTO event_inbox (kind, name, type) VALUES ('File', :n, 'Ready')", n=f"{unique}-other")
    pages, cursor = events.since(engine, start, events.Filter(names=(unique,)), size=2)
    first = next(pages)
    assert [e["message"] for e in first] == ["burst 1", "burst 2"], "one page read, not the whole burst"
    rest = list(pages)
    assert [len(p) for p in rest] == [2, 1]
    assert [e["message"] for p in rest for e in p] == [f"burst {i}" for i in range(3, 6)]
    assert rest[-1][-1]["id"] < cursor <= events.head(engine), "past the other resource's newer event too"


def test_a_writer_notifies_only_when_no_earlier_event_waits_and_the_publisher_takes_what_it_held(
    servers: tuple[str, str],
) -> None:
    """One NOTIFY per burst, not per event (each NOTIFY serialises commits); a writer that relied on an earlier
    event's notification holds it, so the publisher deleting it waits and then takes this one too."""
    import threading

    import psycopg

    from models.database import libpq_url

    insert = "INSERT INTO event_inbox (kind, name, type) VALUES ('File', %s, 'Ready')"
    with scratch_database(servers[0], "notify") as url:
        target = libpq_url(url)
        with psycopg.connect(target, autocommit=True) as listener, psycopg.connect(target, autocommit=True) as w:
            listener.execute("LISTEN setpoint_events")

            def heard() -> int:
                return len(list(listener.notifies(timeout=0.3)))

            w.execute(insert, ("a",))
            assert heard() == 1, "the first event waiting says so"
            w.execute(insert, ("b",))
            assert heard() == 0, "an event already waits: its reader takes this one too"
            assert w.execute("SELECT setpoint_publish_events()").fetchone() == (2,)
            w.execute(insert, ("c",))
            assert heard() == 1, "the inbox was empty again"
            with psycopg.connect(target) as holder, psycopg.connect(target, autocommit=True) as publisher:
                holder.execute(insert, ("d",))  # holds c until it commits, and sends nothing
                moved: list[int] = []
                thread = threading.Thread(
                    target=lambda: moved.append(publisher.execute("SELECT setpoint_publish_events()").fetchone()[0])
                )
                thread.start()
                thread.join(0.5)
                assert thread.is_alive(), "the publisher waits for the writer holding c"
                holder.commit()
                thread.join(10)
            assert moved == [2] and heard() == 0, "and then takes c and d, in one call"
            names = [row[0] for row in w.execute("SELECT name FROM events ORDER BY id")]
            assert names == ["a", "b", "c", "d"]


def test_a_writer_finds_an_earlier_waiting_event_through_the_index_whatever_the_statistics_say(
    servers: tuple[str, str],
) -> None:
    """The wake-up lookup of each event must not read the whole inbox: planned while statistics said the inbox was
    empty, it did (a full scan per event: an insert cost 0.4 ms at 1,000 waiting events, 1.5 ms at 6,000). Counted by
    PostgreSQL for this transaction: no sequential scan of the inbox, however many events wait."""
    import psycopg

    from models.database import libpq_url

    with scratch_database(servers[0], "inbox_scan") as url, psycopg.connect(libpq_url(url)) as conn:
        conn.autocommit = True
        conn.execute("ANALYZE event_inbox")  # empty: what a publish and an autoanalyze leave
        conn.autocommit = False
        for i in range(200):
            conn.execute("INSERT INTO event_inbox (kind, name, type) VALUES ('File', %s, 'Ready')", (f"n{i}",))
        row = conn.execute("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'event_inbox'").fetchone()
        assert row is not None and row[0] == 0, f"{row[0] if row else '?'} full scans of the inbox for 200 events"
