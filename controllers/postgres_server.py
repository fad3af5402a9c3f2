"""What the PostgreSQL kinds share: a session on the server a secret names, statements built with psycopg.sql (every
identifier and literal quoted by the driver, never formatted in), and the action that runs one.

Sessions come from the worker's bounded pools (worker/targets.py); errors the driver raises inside one become the
same ServerUnreachable / AccessDenied the pool gives, naming the server without its password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from models.postgres import MAX_IDENTIFIER_BYTES
from setpoint.errors import InvalidSpec
from worker import targets
from worker.controller import Action
from worker.secrets import Redacted

RESERVED = ("public", "none", "current_role", "current_user", "session_user")
"""Role names PostgreSQL keeps for itself (as are those starting with pg_)."""


def check_name(field: str, name: str, reserved: tuple[str, ...] = RESERVED) -> None:
    """Any identifier PostgreSQL would keep as given (it is quoted everywhere), but none it reserves or cuts."""
    if not name or "\x00" in name:
        raise InvalidSpec(field, "an empty name or one with a NUL character cannot name a PostgreSQL object")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise InvalidSpec(field, f"{name!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes")
    if name.lower().startswith("pg_") or name.lower() in reserved:
        raise InvalidSpec(field, f"{name!r} is reserved by PostgreSQL")


def check_keyword(field: str, value: str, allowed: tuple[str, ...]) -> str:
    """`value` upper-cased if it is one of `allowed`, else InvalidSpec naming the field and what is allowed."""
    if value.upper() not in allowed:
        raise InvalidSpec(field, f"{value!r} is not one of {', '.join(allowed)}")
    return value.upper()


def database_url(url: str, database: str) -> str:
    """The server's URL (with its credentials) on another database."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def public_url(url: str, database: str) -> str:
    """The URL others may be given for a database: the server's, without any password."""
    parsed = targets.parse(url).set(database=database)._replace(password=None)
    return targets.shown(parsed)


@contextlib.contextmanager
def session(url: str, database: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection from the server's pool (on `database` if given)."""
    target = database_url(url, database) if database is not None else url
    with targets.connect(target) as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        try:
            yield raw
        except psycopg.OperationalError as error:
            wrapped = DBAPIError.instance(None, None, error, psycopg.Error)
            assert isinstance(wrapped, DBAPIError)
            raise targets.classify(targets.parse(target), wrapped) from None
        except psycopg.errors.InsufficientPrivilege as error:
            raise targets.AccessDenied(f"{targets.shown(targets.parse(target))}: {first_line(error)}") from None


@contextlib.contextmanager
def closing_session(url: str, database: str) -> Iterator[psycopg.Connection[Any]]:
    """A session on one database that leaves no pooled connection to it behind, so that nobody's DROP DATABASE
    (an admin's, or our own teardown) is refused because Setpoint is connected."""
    try:
        with session(url, database) as raw:
            yield raw
    finally:
        targets.engine(database_url(url, database)).dispose()


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def detail(error: psycopg.Error) -> str:
    """The server's DETAIL (what blocks a DROP ROLE, for instance), on one line."""
    said = error.diag.message_detail or ""
    return re.sub(r"\s*\n\s*", "; ", said.strip())


@dataclasses.dataclass(frozen=True)
class Execute(Action):
    """One statement on the server (on `database` if given); `says` is what history shows, never a secret."""

    server: Redacted
    statement: sql.Composed
    says: str
    database: str | None = None

    def run(self) -> None:
        if self.database is None:
            with session(self.server.value) as raw:
                raw.execute(self.statement)
        else:
            with closing_session(self.server.value, self.database) as raw:
                raw.execute(self.statement)

    def __str__(self) -> str:
        return self.says
