"""A user's kind made before the input limits gets them on upgrade, as the built-in kinds did (migration 0009)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.schema import CreateTable

from models import triggers
from models.database import libpq_url, make_engine
from tests.conftest import ROOT, alembic, scratch_database
from tests.kinds import Noop

OLD_KIND = """
CREATE TABLE gadgets (
    id serial PRIMARY KEY,
    name varchar(253) NOT NULL UNIQUE,
    uid uuid NOT NULL DEFAULT gen_random_uuid(),
    generation integer NOT NULL DEFAULT 1,
    interval_seconds integer CONSTRAINT ck_gadgets_interval_seconds_positive
        CHECK (interval_seconds IS NULL OR interval_seconds > 0),
    paused boolean NOT NULL DEFAULT false,
    deletion_policy varchar(16) NOT NULL DEFAULT 'delete',
    labels jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    size integer NOT NULL DEFAULT 1
)
"""
"""A kind's table as a user's migration made it before the limits: no depth, size or week on its columns."""

LIMITS = {"ck_gadgets_labels_depth", "ck_gadgets_labels_size", "ck_gadgets_interval_seconds_range"}
DEEP = '{"a": ' * 20 + "{}" + "}" * 20
HUGE = json.dumps({"blob": base64.b64encode(os.urandom(100_000)).decode()})


def make_kinds(url: str) -> None:
    """At revision 0008: the old-style `gadgets`, and `noops` made by today's CreateTable (limits included)."""
    alembic("upgrade", "0008", database_url=url)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(OLD_KIND)
        conn.execute(triggers.attach("gadgets", "Gadget"))
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(CreateTable(Noop.__table__))  # type: ignore[attr-defined]
        conn.exec_driver_sql(triggers.attach("noops", "Noop"))
    engine.dispose()


def constraints(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass", (table,)).fetchall()
    return {row[0] for row in rows}


def refused_by(conn: psycopg.Connection, statement: str, *params: object) -> str:
    """The constraint that refuses `statement` (which must be refused)."""
    with pytest.raises(errors.CheckViolation) as refused:
        conn.execute(statement, params)
    return str(refused.value.diag.constraint_name)


def test_the_upgrade_limits_a_users_older_kind_and_the_downgrade_removes_only_that(
    servers: tuple[str, str],
) -> None:
    with scratch_database(servers[0], "kindlimits", migrate=False) as url:
        make_kinds(url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("INSERT INTO gadgets (name, interval_seconds) VALUES ('slow', 2147483647)")
            noops_before = constraints(conn, "noops")
        alembic("upgrade", "head", database_url=url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            intervals = conn.execute(
                "SELECT g.interval_seconds, s.interval_seconds FROM gadgets AS g "
                "JOIN statuses AS s ON s.kind = 'Gadget' AND s.name = g.name WHERE g.name = 'slow'"
            ).fetchone()
            assert intervals == (604800, 604800), "a reconcile at most a week away, as files and workloads got"
            assert LIMITS <= constraints(conn, "gadgets")
            update = "UPDATE gadgets SET labels = %s::jsonb WHERE name = 'slow'"
            assert refused_by(conn, update, DEEP) == "ck_gadgets_labels_depth"
            assert refused_by(conn, update, HUGE) == "ck_gadgets_labels_size"
            over_a_week = "UPDATE gadgets SET interval_seconds = 604801"
            assert refused_by(conn, over_a_week) == "ck_gadgets_interval_seconds_range"
            assert constraints(conn, "noops") == noops_before, "a kind that had its limits is left as it was"

        alembic("downgrade", "0008", database_url=url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            assert not LIMITS & constraints(conn, "gadgets")
            assert "ck_gadgets_interval_seconds_positive" in constraints(conn, "gadgets")
            assert constraints(conn, "noops") == noops_before, "what the kind's own CreateTable made stays"
            conn.execute("UPDATE gadgets SET labels = %s::jsonb WHERE name = 'slow'", (DEEP,))
            generation = conn.execute("SELECT generation FROM statuses WHERE kind = 'Gadget' AND name = 'slow'")
            assert generation.fetchone() == (3,), "the kind still works: the clamp was generation 2, this is 3"


def test_the_upgrade_stops_at_a_row_over_a_limit_naming_it_and_changes_nothing(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], "kindlimits", migrate=False) as url:
        make_kinds(url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("INSERT INTO gadgets (name, interval_seconds) VALUES ('slow', 2147483647)")
            conn.execute("INSERT INTO gadgets (name, labels) VALUES ('deep', %s::jsonb)", (DEEP,))
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env={**os.environ, "SETPOINT_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0
        assert "gadgets deep: labels depth is over its limit" in done.stderr
        assert "fix or delete these rows, then migrate again" in done.stderr
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0008",)
            slow = conn.execute("SELECT interval_seconds FROM gadgets WHERE name = 'slow'").fetchone()
            assert slow == (2147483647,), "nothing half-applied: the clamp went back with the rest"
            assert not LIMITS & constraints(conn, "gadgets")
            conn.execute("DELETE FROM gadgets WHERE name = 'deep'")
        alembic("upgrade", "head", database_url=url)
