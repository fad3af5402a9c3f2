"""Secrets as the CLI and the REST API handle them: set, list, read and delete, never reading a value back.

The API's database role may write `value` but read only `name`, `digest` and the times (migration 0012), and
`INSERT … ON CONFLICT DO UPDATE` needs more than that, so `put` updates first and inserts when no row was
there (once more on a unique violation: a concurrent put inserted it meanwhile). Every statement here works
with that role alone, and nothing here ever selects `value`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from psycopg import errors as pg_errors
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DataError, IntegrityError, StatementError

from models.base import NAME_PATTERN
from models.secret import MAX_SECRET_BYTES
from setpoint.errors import InvalidDocument, NotFound

NAME_RULES = (
    "lower-case letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most 253 characters"
)
Change = Literal["created", "updated", "unchanged"]


@dataclasses.dataclass(frozen=True)
class SecretView:
    """What may be shown of a secret: that it is set, a digest to tell values apart, when, and who uses it."""

    name: str
    digest: str
    created_at: datetime
    updated_at: datetime
    used_by: tuple[str, ...] = ()
    """The resources that refer to it (`Workload/api`), as the `dependencies` table records them."""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "set": True,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "used_by": list(self.used_by),
        }


@dataclasses.dataclass(frozen=True)
class Put:
    """What a put did: `created`, `updated`, or `unchanged` (the same value was given again)."""

    secret: SecretView
    change: Change


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidDocument(f"secret name {name!r} is not valid: {NAME_RULES}", "name")


def check_value(value: str) -> None:
    """Refuse what the table would refuse, saying why, before anything is written (the value is never quoted)."""
    if value == "":
        raise InvalidDocument("the secret's value is empty: give a value of at least one character", "value")
    if "\x00" in value:
        raise InvalidDocument("the secret's value contains a NUL character, which PostgreSQL cannot store", "value")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidDocument("the secret's value is not valid Unicode text", "value") from None
    if size > MAX_SECRET_BYTES:
        raise InvalidDocument(
            f"the secret's value is {size} bytes; at most {MAX_SECRET_BYTES} (64 KiB) may be stored", "value"
        )


_COLUMNS = "name, digest, created_at, updated_at"
_USED_BY = """ARRAY(SELECT d.kind || '/' || d.name FROM dependencies AS d
                 WHERE d.on_kind = 'Secret' AND d.on_name = secrets.name ORDER BY 1) AS used_by"""
_UPDATE = text(
    f"UPDATE secrets SET value = :value WHERE name = :name RETURNING {_COLUMNS}, {_USED_BY}, "
    # The database's trigger moves updated_at to now() only when the value changed.
    "updated_at = now() AS changed"
)
_INSERT = text(f"INSERT INTO secrets (name, value) VALUES (:name, :value) RETURNING {_COLUMNS}, {_USED_BY}")


def put(engine: Engine, name: str, value: str) -> Put:
    """Create secret `name` or change its value; every resource that refers to it is due at once (its trigger)."""
    check_name(name)
    check_value(value)
    for attempt in (1, 2):
        try:
            with _parameters_hidden(), engine.begin() as conn:
                return _put(conn, name, value)
        except (IntegrityError, DataError) as error:
            if attempt == 1 and isinstance(error.orig, pg_errors.UniqueViolation):
                continue  # inserted by a concurrent put since our update: update it now
            # Its DETAIL may quote the failing row, value and all: only the primary message is passed on.
            primary = getattr(getattr(error.orig, "diag", None), "message_primary", None) or type(error.orig).__name__
            raise InvalidDocument(f"the database refused secret {name!r}: {primary}", "value") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _parameters_hidden() -> Iterator[None]:
    """A database error raised while writing a value does not quote the statement's parameters (the value) in its
    message, nor in the traceback a server logs."""
    try:
        yield
    except StatementError as error:
        error.hide_parameters = True
        raise


def _put(conn: Connection, name: str, value: str) -> Put:
    params = {"name": name, "value": value}
    row = conn.execute(_UPDATE, params).mappings().first()
    if row is not None:
        return Put(_view(row), "updated" if row["changed"] else "unchanged")
    return Put(_view(conn.execute(_INSERT, params).mappings().one()), "created")


def listing(engine: Engine, *, prefix: str | None = None, limit: int = 10_000, offset: int = 0) -> list[SecretView]:
    """Secrets by name (those whose name starts with `prefix`, if given)."""
    where = "WHERE starts_with(name, :prefix)" if prefix else ""
    query = text(f"SELECT {_COLUMNS}, {_USED_BY} FROM secrets {where} ORDER BY name LIMIT :limit OFFSET :offset")
    with engine.connect() as conn:
        rows = conn.execute(query, {"prefix": prefix, "limit": limit, "offset": offset}).mappings().all()
    return [_view(row) for row in rows]


def get(engine: Engine, name: str) -> SecretView:
    with engine.connect() as conn:
        row = (
            conn.execute(text(f"SELECT {_COLUMNS}, {_USED_BY} FROM secrets WHERE name = :name"), {"name": name})
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"secret {name!r} not found")
    return _view(row)


def delete(engine: Engine, name: str) -> SecretView:
    """Delete secret `name`; the resources that refer to it wait (DependencyMissing) until it is set again."""
    with engine.begin() as conn:
        query = text(f"DELETE FROM secrets WHERE name = :name RETURNING {_COLUMNS}, {_USED_BY}")
        row = conn.execute(query, {"name": name}).mappings().first()
    if row is None:
        raise NotFound(f"secret {name!r} not found")
    return _view(row)


def _view(row: Any) -> SecretView:
    return SecretView(row["name"], row["digest"], row["created_at"], row["updated_at"], tuple(row["used_by"] or ()))
