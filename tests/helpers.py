"""Reading status and history the way an admin does: plain SQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from models.database import libpq_url, make_engine


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def unwatched(engine: Engine, statement: str, name: str, **params: Any) -> None:
    """Run `statement` on resource `name` and, in the same transaction, put its next reconcile a day away: for
    tests of the schema alone, which the session's running stack must not race (it reconciles due rows within
    milliseconds of the commit)."""
    with engine.begin() as conn:
        conn.execute(text(statement), {"n": name, **params})
        conn.execute(
            text("UPDATE statuses SET next_reconcile_at = now() + interval '1 day' WHERE name = :n"), {"n": name}
        )


def _row(engine: Engine, relation: str, name: str, kind: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        query = text(f"SELECT * FROM {relation} WHERE kind = :kind AND name = :name")
        row = conn.execute(query, {"kind": kind, "name": name}).mappings().first()
    return dict(row) if row else None


def status(engine: Engine, name: str, kind: str = "File") -> dict[str, Any] | None:
    return _row(engine, "statuses", name, kind)


def view(engine: Engine, name: str, kind: str = "File") -> dict[str, Any] | None:
    return _row(engine, "resource_status", name, kind)


def runs(engine: Engine, name: str, kind: str = "File") -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text("SELECT * FROM runs WHERE kind = :kind AND name = :name ORDER BY started_at, id"),
                {"kind": kind, "name": name},
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def ready_at(engine: Engine, name: str, generation: int, kind: str = "File") -> dict[str, Any] | None:
    """The status once it shows `generation` observed and ready, else None."""
    row = status(engine, name, kind)
    if row and row["observed_generation"] == generation and row["ready"]:
        return row
    return None


def stack_log(stack: dict[str, str], process: str = "worker") -> str:
    """What the shared stack's `worker` or `scheduler` has logged so far (tests.conftest.stack writes the logs
    next to its state folder)."""
    return (Path(stack["SETPOINT_STATE_DIR"]).parent / f"{process}.log").read_text(errors="replace")


def settled(engine: Engine, name: str) -> bool:
    """Nothing due before the hour's interval, and the last run ended over half a second ago (so no reconcile
    caused by Setpoint's own write, seen by its watch, is about to look anyway)."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT s.enqueued_at IS NULL AND s.next_reconcile_at > now() + interval '10 minutes' "
                    "AND (SELECT max(finished_at) FROM runs WHERE name = :n) < now() - interval '0.5 seconds' "
                    "FROM statuses AS s WHERE s.name = :n"
                ),
                {"n": name},
            ).scalar()
        )


ROLES = ("setpoint_worker", "setpoint_scheduler", "setpoint_api")


@contextlib.contextmanager
def logged_in_as_roles(database_url: str) -> Iterator[dict[str, Engine]]:
    """An engine per Setpoint role, logged in as a fresh LOGIN user that is a member of it (as a deployment does);
    the users go afterwards."""
    users = {role: f"{role}_test_{uuid.uuid4().hex[:8]}" for role in ROLES}
    engines = {}
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        for role, user in users.items():
            password = uuid.uuid4().hex
            conn.execute(
                pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    pgsql.Identifier(user), pgsql.Literal(password), pgsql.Identifier(role)
                )
            )
            url = make_url(database_url).set(username=user, password=password)
            engines[role] = make_engine(url.render_as_string(hide_password=False))
    try:
        yield engines
    finally:
        for engine in engines.values():
            engine.dispose()
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            for user in users.values():
                conn.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(user)))
