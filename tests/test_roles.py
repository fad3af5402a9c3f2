"""Least privilege: each process's database role does its own job, and is refused what belongs to another's.

Every engine here logs in as a user made for the test and granted one of the roles, as a deployment does.
Resources the worker reconciles in-process are kept out of the shared stack's way (not due), and the API's
trigger effects are read inside its own transaction, so a stack running in the same session changes nothing.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from models.database import libpq_url
from resources import documents, kinds
from resources.manifest import Document
from scheduler import claim, nodes, retention
from setpoint.settings import Settings
from tests.conftest import alembic
from tests.helpers import ROLES, logged_in_as_roles, runs, sql, status
from worker import heartbeat, runtime


@pytest.fixture(scope="module")
def login(database_url: str) -> Iterator[dict[str, Engine]]:
    with logged_in_as_roles(database_url) as engines:
        yield engines


def refused(engine: Engine, statement: str, **params: Any) -> None:
    with pytest.raises(ProgrammingError) as raised:
        sql(engine, statement, **params)
    assert isinstance(raised.value.orig, psycopg.errors.InsufficientPrivilege), raised.value


def insert_file(conn: Connection, name: str, path: Path) -> None:
    conn.execute(
        text("INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'hello', 3600)"),
        {"n": name, "p": str(path)},
    )


def not_due(conn: Connection, name: str) -> None:
    """Keep the shared stack's scheduler from claiming the resource: this test reconciles it itself."""
    conn.execute(text("UPDATE statuses SET next_reconcile_at = NULL WHERE kind = 'File' AND name = :n"), {"n": name})


def reconcile_as(engine: Engine, name: str, tmp_path: Path) -> str:
    settings = Settings(state_dir=str(tmp_path / "state"), worker_metrics_port=None)
    request = runtime.Request("File", name)
    done = runtime.reconcile(
        request, engine=engine, settings=settings, now=lambda: datetime.now(UTC), rng=random.Random(0)
    )
    return done.outcome


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE files SET content = 'forged' WHERE name = :n",
        "DELETE FROM files WHERE name = :n",
        "INSERT INTO files (name, path) VALUES (:n || '-2', :p)",
        "UPDATE workloads SET command = 'forged' WHERE name = :n",
        "UPDATE statuses SET generation = 99 WHERE name = :n",
        "UPDATE statuses SET last_desired = '{}' WHERE name = :n",
        "TRUNCATE files",
    ],
)
def test_a_worker_cannot_change_desired_state(
    engine: Engine, login: dict[str, Engine], unique: str, tmp_path: Path, statement: str
) -> None:
    sql(engine, "INSERT INTO files (name, path, content) VALUES (:n, :p, 'desired')", n=unique, p=str(tmp_path / "f"))
    if statement.startswith(("UPDATE files", "DELETE FROM files", "UPDATE workloads")):
        # Row-level security (models/ownership.py): the worker's writes see no row that no controller owns.
        sql(login["setpoint_worker"], statement, n=unique, p=str(tmp_path / "forged"))
    else:
        refused(login["setpoint_worker"], statement, n=unique, p=str(tmp_path / "forged"))
    with engine.connect() as conn:
        row = conn.execute(text("SELECT content, generation FROM files WHERE name = :n"), {"n": unique}).one()
    assert (row.content, row.generation) == ("desired", 1)


def test_a_worker_reconciles_and_tears_down_with_its_role_alone(
    engine: Engine, login: dict[str, Engine], unique: str, tmp_path: Path
) -> None:
    path = tmp_path / "motd"
    with engine.begin() as conn:
        insert_file(conn, unique, path)
        not_due(conn, unique)
    assert reconcile_as(login["setpoint_worker"], unique, tmp_path) == "changed"
    assert path.read_text() == "hello"
    row = status(engine, unique)
    assert row is not None and row["ready"] and row["observed_generation"] == 1
    assert row["node"] == Settings().node_name, "a host-local resource is pinned to the worker's node"

    with engine.begin() as conn:
        conn.execute(text("DELETE FROM files WHERE name = :n"), {"n": unique})
        not_due(conn, unique)
    assert reconcile_as(login["setpoint_worker"], unique, tmp_path) == "deleted"
    assert not path.exists() and status(engine, unique) is None
    assert [r["outcome"] for r in runs(engine, unique)] == ["changed", "deleted"]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM statuses WHERE kind = 'File' AND name = :n",
        "UPDATE statuses SET node = 'elsewhere' WHERE kind = 'File' AND name = :n",
        "UPDATE statuses SET node = NULL WHERE kind = 'File' AND name = :n",
    ],
)
def test_a_worker_cannot_delete_a_live_status_or_move_its_node(
    engine: Engine, login: dict[str, Engine], unique: str, tmp_path: Path, statement: str
) -> None:
    with engine.begin() as conn:
        insert_file(conn, unique, tmp_path / "live")
        conn.execute(text("UPDATE statuses SET node = 'here' WHERE kind = 'File' AND name = :n"), {"n": unique})
        not_due(conn, unique)
    refused(login["setpoint_worker"], statement, n=unique)
    row = status(engine, unique)
    assert row is not None and row["node"] == "here"


def test_the_workers_status_functions_leave_a_live_resource_alone(
    engine: Engine, login: dict[str, Engine], unique: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        insert_file(conn, unique, tmp_path / "live")
        conn.execute(text("UPDATE statuses SET node = 'here' WHERE kind = 'File' AND name = :n"), {"n": unique})
        not_due(conn, unique)
    with login["setpoint_worker"].begin() as conn:
        calls = (
            "SELECT setpoint_teardown_done('File', :n)",  # no tombstone: not torn down
            "SELECT setpoint_forget_orphan('File', :n)",  # its desired row exists
            "SELECT setpoint_pin_node('File', :n, 'elsewhere')",  # already on a node
        )
        assert [conn.execute(text(call), {"n": unique}).scalar() for call in calls] == [False, False, False]
    row = status(engine, unique)
    assert row is not None and row["node"] == "here"
    for role in ("setpoint_scheduler", "setpoint_api"):
        refused(login[role], "SELECT setpoint_forget_orphan('File', :n)", n=unique)
    refused(login["setpoint_api"], "SELECT setpoint_mark_nodes_lost(60)")


def test_a_worker_forgets_a_status_whose_row_vanished_without_a_tombstone(
    engine: Engine, login: dict[str, Engine], unique: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        insert_file(conn, unique, tmp_path / "vanished")
        not_due(conn, unique)
        # As a TRUNCATE does: the desired row goes without its triggers, so no tombstone is left.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("DELETE FROM files WHERE name = :n"), {"n": unique})
    assert reconcile_as(login["setpoint_worker"], unique, tmp_path) == "gone"
    assert status(engine, unique) is None


def test_a_worker_heartbeats_its_node_with_its_role_alone(engine: Engine, login: dict[str, Engine]) -> None:
    node = f"roles-{uuid.uuid4().hex[:8]}"
    url = login["setpoint_worker"].url.set(drivername="postgresql").render_as_string(hide_password=False)
    beating = heartbeat.Heartbeat(Settings(database_url=url, node=node), worker=f"w1@{node}")
    try:
        beating.beat(first=True)
        beating.beat()
    finally:
        beating.stop()
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT worker, last_seen_at >= started_at FROM nodes WHERE name = :n"), {"n": node}
        ).one()
    assert tuple(row) == (f"w1@{node}", True)
    refused(login["setpoint_api"], "UPDATE nodes SET last_seen_at = now() WHERE name = :n", n=node)


def test_the_api_changes_desired_state_and_the_triggers_still_keep_status(
    login: dict[str, Engine], unique: str, tmp_path: Path
) -> None:
    def generation(conn: Connection) -> tuple[int, str]:
        query = "SELECT generation, phase FROM statuses WHERE kind = 'File' AND name = :n"
        row = conn.execute(text(query), {"n": unique}).one()
        return row.generation, row.phase

    # Read inside the API's transaction: a running stack cannot have reconciled or removed the row yet.
    with login["setpoint_api"].begin() as conn:
        insert_file(conn, unique, tmp_path / "api")
        assert generation(conn) == (1, "Pending")
        conn.execute(text("UPDATE files SET content = 'changed' WHERE name = :n"), {"n": unique})
        assert generation(conn) == (2, "Pending")
        conn.execute(text("DELETE FROM files WHERE name = :n"), {"n": unique})
        assert generation(conn) == (2, "Deleting")


def test_the_api_may_make_a_resource_due_but_not_write_its_status(
    engine: Engine, login: dict[str, Engine], unique: str, tmp_path: Path
) -> None:
    sql(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", n=unique, p=str(tmp_path / "due"))
    api = login["setpoint_api"]
    refused(api, "UPDATE statuses SET phase = 'Ready', ready = true WHERE kind = 'File' AND name = :n", n=unique)
    refused(api, "INSERT INTO statuses (kind, name, generation) VALUES ('File', :n || '-2', 1)", n=unique)
    refused(api, "DELETE FROM statuses WHERE kind = 'File' AND name = :n", n=unique)
    with api.begin() as conn:
        conn.execute(
            text("UPDATE statuses SET next_reconcile_at = '2999-01-01Z' WHERE kind = 'File' AND name = :n"),
            {"n": unique},
        )
        due = conn.execute(
            text("SELECT next_reconcile_at FROM statuses WHERE kind = 'File' AND name = :n"), {"n": unique}
        ).scalar_one()
    assert due.year == 2999


def test_every_call_the_api_makes_works_with_its_role(login: dict[str, Engine], unique: str, tmp_path: Path) -> None:
    api, file, path = login["setpoint_api"], kinds.resolve("File"), str(tmp_path / "every-call")
    created = documents.create(api, file, unique, {"path": path})
    assert created["status"]["generation"] == 1
    assert documents.replace(api, file, unique, {"content": "b"}, partial=True)["spec"]["content"] == "b"
    [applied] = documents.apply(api, [Document("File", unique, {"path": path, "content": "c"}, "test")])
    assert applied.generation == 3
    documents.set_paused(api, file, unique, True)
    documents.reconcile_now(api, file, unique)
    assert documents.listing(api, file, prefix=unique)[0]["spec"]["paused"] is True
    documents.runs(api, file, unique)  # a running stack may have recorded some already: reading is the point
    documents.delete(api, file, unique)


def test_the_scheduler_claims_and_prunes_but_cannot_change_desired_state_or_status(
    engine: Engine, login: dict[str, Engine], unique: str, tmp_path: Path
) -> None:
    scheduler = login["setpoint_scheduler"]
    # Privileges are checked before any row is touched, so claiming none steals nothing from a running stack.
    assert claim.claim_due(scheduler, batch=0, default_interval_seconds=30, retry_window_s=5, running_limit_s=60) == []
    claim.release(scheduler, [claim.Claim("File", unique, 1, None, datetime.now(UTC), datetime.now(UTC))])
    assert retention.prune(scheduler, keep=1_000_000, days=36_500) == 0
    nodes.mark_lost(scheduler, silent_s=3600)  # resources on silent nodes only: what the running scheduler does
    sql(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", n=unique, p=str(tmp_path / "sched"))
    refused(scheduler, "UPDATE files SET content = 'forged' WHERE name = :n", n=unique)
    refused(scheduler, "UPDATE statuses SET phase = 'Ready' WHERE kind = 'File' AND name = :n", n=unique)
    refused(
        scheduler,
        "INSERT INTO runs (kind, name, started_at, finished_at, duration_ms, outcome) "
        "VALUES ('File', :n, now(), now(), 0, 'noop')",
        n=unique,
    )


def test_nobody_may_attach_the_status_trigger_to_a_table_of_their_own(login: dict[str, Engine]) -> None:
    """setpoint_track runs as its owner: attached to a temporary table it would write any status row."""
    with pytest.raises(ProgrammingError) as raised, login["setpoint_api"].begin() as conn:
        conn.execute(text("CREATE TEMPORARY TABLE fake (name text, generation int, deletion_policy text)"))
        conn.execute(
            text("CREATE TRIGGER fake AFTER DELETE ON fake FOR EACH ROW EXECUTE FUNCTION setpoint_track('File')")
        )
    assert isinstance(raised.value.orig, psycopg.errors.InsufficientPrivilege), raised.value


def test_downgrade_revokes_this_databases_grants_and_keeps_roles_other_databases_use(
    servers: tuple[str, str], database_url: str
) -> None:
    admin = servers[0]
    name = f"setpoint_roles_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)

    def rights() -> tuple[bool, bool, int]:
        with psycopg.connect(libpq_url(url)) as conn:
            row = conn.execute(
                "SELECT has_table_privilege('setpoint_api', 'files', 'INSERT'), "
                "(SELECT prosecdef FROM pg_proc WHERE proname = 'setpoint_track'), "
                "(SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s))",
                (list(ROLES),),
            ).fetchone()
        assert row is not None
        return row[0], row[1], row[2]

    try:
        alembic("upgrade", "head", database_url=url)
        assert rights() == (True, True, 3)
        alembic("downgrade", "0002", database_url=url)
        assert rights() == (False, False, 3), "the session's database still uses the roles"
        alembic("upgrade", "head", database_url=url)
        assert rights() == (True, True, 3)
    finally:
        with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
