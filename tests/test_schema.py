"""Desired state in PostgreSQL: generations, constraints, tombstones and migrations, as an admin meets them."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError
from sqlmodel import Session, select

from models import File
from models.database import libpq_url
from resources import documents
from resources.manifest import Document
from tests.conftest import alembic, scratch_database
from tests.helpers import sql, status, unwatched


def generation(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT generation FROM files WHERE name = :n"), {"n": name}).scalar_one()


def test_raw_sql_update_bumps_generation_only_when_desired_columns_change(
    engine: Engine, unique: str, tmp_path: Path
) -> None:
    sql(engine, "INSERT INTO files (name, path, content) VALUES (:n, :p, 'a')", n=unique, p=str(tmp_path / "f"))
    assert generation(engine, unique) == 1
    sql(engine, "UPDATE files SET content = 'b' WHERE name = :n", n=unique)
    assert generation(engine, unique) == 2
    sql(engine, "UPDATE files SET content = 'b' WHERE name = :n", n=unique)
    assert generation(engine, unique) == 2, "writing the same value is not a change"
    sql(engine, "UPDATE files SET generation = 99 WHERE name = :n", n=unique)
    assert generation(engine, unique) == 2, "generation belongs to the database"
    assert status(engine, unique)["generation"] == 2  # type: ignore[index]


def status_row(engine: Engine, name: str) -> str:
    """The whole statuses row, every column, as PostgreSQL prints it."""
    with engine.connect() as conn:
        query = "SELECT to_jsonb(s)::text FROM statuses AS s WHERE kind = 'File' AND name = :n"
        return str(conn.execute(text(query), {"n": name}).scalar_one())


def test_an_update_that_changes_nothing_leaves_a_failing_resource_in_back_off(
    engine: Engine, unique: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:  # one transaction: the session's stack never sees it due
        conn.execute(
            text("INSERT INTO files (name, path, content) VALUES (:n, :p, 'a')"), {"n": unique, "p": str(tmp_path)}
        )
        conn.execute(
            text(
                "UPDATE statuses SET phase = 'Failed', consecutive_failures = 4, last_error = 'disk full', "
                "last_reconcile_at = now() - interval '1 minute', next_reconcile_at = now() + interval '1 hour', "
                "observed_generation = 1 WHERE kind = 'File' AND name = :n"
            ),
            {"n": unique},
        )
    backing_off = status_row(engine, unique)
    for unchanged in (
        "UPDATE files SET content = content WHERE name = :n",
        "UPDATE files SET content = 'a', path = path, mode = mode, labels = labels WHERE name = :n",
        "UPDATE files SET generation = generation + 1, updated_at = now() WHERE name = :n",
    ):
        sql(engine, unchanged, n=unique)
        assert status_row(engine, unique) == backing_off, f"{unchanged} changed the status"
    documents.apply(engine, [Document("File", unique, {"path": str(tmp_path), "content": "a"}, "test")])
    assert status_row(engine, unique) == backing_off, "applying the same spec changed the status"
    assert generation(engine, unique) == 1


def test_orm_edits_bump_generation_including_in_place_json(engine: Engine, unique: str, tmp_path: Path) -> None:
    with Session(engine) as session:
        row = File(name=unique, path=str(tmp_path / "orm"), content="a", labels={"team": "ops"})
        session.add(row)
        session.commit()
        session.refresh(row)
        assert row.generation == 1
        row.content = "b"
        session.commit()
        assert row.generation == 2, "the ORM reads the trigger's generation back"
        row.labels["team"] = "platform"  # an in-place edit of a JSON column
        session.commit()
        assert row.generation == 3
    with Session(engine) as session:
        again = session.exec(select(File).where(File.name == unique)).one()
        assert again.labels == {"team": "platform"} and again.generation == 3


def test_names_are_immutable_and_constrained(engine: Engine, unique: str, tmp_path: Path) -> None:
    sql(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", n=unique, p=str(tmp_path / "f"))
    with pytest.raises(IntegrityError, match="name is immutable"):
        sql(engine, "UPDATE files SET name = 'other' WHERE name = :n", n=unique)
    for bad in ["Has Space", "quote'd", "ünïcode", "", "x" * 300, "-leading"]:
        with pytest.raises((IntegrityError, DataError)):
            sql(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", n=bad, p=str(tmp_path / "bad"))


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("path", "relative/path", "path_absolute"),
        ("mode", "999", "mode_octal"),
        ("interval_seconds", 0, "interval_seconds_range"),
        ("deletion_policy", "shred", "deletion_policy_known"),
    ],
)
def test_bad_values_are_refused_by_constraints(
    engine: Engine, unique: str, tmp_path: Path, column: str, value: object, constraint: str
) -> None:
    values = {"name": unique, "path": str(tmp_path / "f"), column: value}
    with pytest.raises(IntegrityError, match=constraint):
        sql(
            engine,
            f"INSERT INTO files ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})",
            **values,
        )
    assert status(engine, unique) is None, "a refused row leaves nothing behind"


def test_delete_keeps_a_tombstone_with_the_last_desired_state(engine: Engine, unique: str, tmp_path: Path) -> None:
    insert = "INSERT INTO files (name, path, content) VALUES (:n, :p, 'last words')"
    unwatched(engine, insert, unique, p=str(tmp_path / "tomb"))
    unwatched(engine, "DELETE FROM files WHERE name = :n", unique)
    row = status(engine, unique)
    assert row is not None and row["deleted_at"] is not None and row["phase"] == "Deleting"
    assert row["last_desired"]["content"] == "last words"


def test_resource_status_view_shows_every_resource(engine: Engine, unique: str, tmp_path: Path) -> None:
    unwatched(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", unique, p=str(tmp_path / "view"))
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT kind, name, generation, observed_generation, ready, phase, message, "
                "last_reconcile_at FROM resource_status WHERE name = :n"
            ),
            {"n": unique},
        ).one()
    assert (row.kind, row.generation, row.ready, row.phase) == ("File", 1, False, "Pending")


def test_alembic_builds_and_removes_everything_and_matches_the_models(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], "migrations", migrate=False) as url:
        alembic("upgrade", "head", database_url=url)
        alembic("check", database_url=url)  # autogenerate finds no difference between models and migrations
        alembic("downgrade", "base", database_url=url)
        with psycopg.connect(libpq_url(url)) as conn:
            left = conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND relname <> 'alembic_version' "
                "AND relkind IN ('r', 'v', 'S')"
            ).fetchall()
            functions = conn.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'setpoint_%'").fetchall()
        assert left == [] and functions == []
        alembic("upgrade", "head", database_url=url)


@pytest.mark.parametrize(
    ("statement", "params"),
    [
        ("INSERT INTO files (name, path) VALUES (NULL, :p)", {}),
        ("INSERT INTO files (name, path) VALUES (:n, NULL)", {}),
        ("INSERT INTO files (name, path, mode) VALUES (:n, :p, NULL)", {}),
        ("INSERT INTO files (name, path, interval_seconds) VALUES (:n, :p, 'soon')", {}),
        ("INSERT INTO files (name, path, interval_seconds) VALUES (:n, :p, 99999999999)", {}),
        ("INSERT INTO files (name, path, labels) VALUES (:n, :p, '[1, 2]')", {}),
        ("INSERT INTO files (name, path) VALUES (:n, :huge)", {"huge": "/" + "x" * 5000}),
        ("INSERT INTO workloads (name, command, replicas) VALUES (:n, 'sleep 1', -1)", {}),
        ("INSERT INTO workloads (name, command, replicas) VALUES (:n, '   ', 1)", {}),
        ("INSERT INTO workloads (name, command, env) VALUES (:n, 'sleep 1', '\"text\"')", {}),
    ],
)
def test_bad_sql_is_refused_and_leaves_nothing_behind(
    engine: Engine, unique: str, tmp_path: Path, statement: str, params: dict
) -> None:
    with pytest.raises((IntegrityError, DataError, ProgrammingError)):
        sql(engine, statement, n=unique, p=str(tmp_path / "f"), **params)
    assert status(engine, unique) is None and status(engine, unique, "Workload") is None
