"""The PostgresDatabase kind's controller: a database on a PostgreSQL server, its owner and the extensions kept
installed in it.

A database holds data, so this kind's deletion_policy is 'orphan' unless a row says 'delete' (then DROP DATABASE
… WITH (FORCE), as Terraform's provider ends sessions before dropping). A database dropped by hand is created
again, and status says its data is lost: the controller knows the database it saw last by its oid (published in
its outputs, which a failed reconcile keeps), and a database missing, or back with another oid, was dropped outside
Setpoint. Sessions on the database itself
(for extensions) are closed after use, so Setpoint never stands in the way of anyone's DROP DATABASE.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from psycopg import sql
from sqlalchemy import text

from controllers import postgres_server as server
from models.postgres import PostgresDatabase
from setpoint.errors import InvalidSpec, PermanentError
from worker import secrets, side_engine
from worker.controller import Action, Controller, Health
from worker.secrets import Redacted

WORD = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
"""Encodings and extension names are plain words; anything else is refused before it reaches the server."""
DATA_LOST = "created again: it was dropped outside Setpoint, its data is lost"


@dataclasses.dataclass(frozen=True)
class DatabaseState:
    exists: bool
    oid: int | None = None
    owner: str | None = None
    encoding: str | None = None
    extensions: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()
    """Extensions wanted that the server cannot install (not in pg_available_extensions)."""
    dropped_outside: bool = False
    """The database Setpoint saw last is gone (missing now, or another database under its name)."""
    data_lost: str | None = None
    """Said once the database was dropped outside Setpoint and created again, for as long as the resource lives."""
    seen_oid: int | None = None
    """The oid of the database this resource saw before, remembered while it is missing."""


def database_name(desired: PostgresDatabase) -> str:
    return desired.external_name or desired.name


def last_seen(desired: PostgresDatabase) -> tuple[int | None, str | None]:
    """The oid of the database this resource (this uid) last saw, and whether its data was lost before. The oid
    is read from its published outputs, which a failed reconcile leaves as they were (its observed does not)."""
    with side_engine.engine().connect() as conn:
        found = conn.execute(
            text("SELECT outputs, observed FROM statuses WHERE kind = :k AND name = :n AND uid = :u"),
            {"k": PostgresDatabase.kind, "n": desired.name, "u": desired.uid},
        ).first()
    outputs, observed = (found[0] or {}, found[1] or {}) if found else ({}, {})
    return outputs.get("oid"), observed.get("data_lost")


class PostgresDatabaseController(Controller[PostgresDatabase, DatabaseState]):
    model = PostgresDatabase

    def validate(self, desired: PostgresDatabase) -> None:
        server.check_name("external_name" if desired.external_name else "name", database_name(desired))
        if desired.owner is not None:
            server.check_name("owner", desired.owner)
        server.check_name("template", desired.template)
        if not WORD.match(desired.encoding):
            raise InvalidSpec("encoding", f"{desired.encoding!r} is not an encoding's name (UTF8, LATIN1, …)")
        for extension in desired.extensions:
            if not WORD.match(extension):
                raise InvalidSpec("extensions", f"{extension!r} is not an extension's name")

    def observe(self, desired: PostgresDatabase) -> DatabaseState:
        name = database_name(desired)
        url = secrets.value(desired.server)
        seen, data_lost = last_seen(desired)
        with server.session(url) as raw:
            row = raw.execute(
                "SELECT oid::bigint, pg_get_userbyid(datdba)::text, pg_encoding_to_char(encoding)::text "
                "FROM pg_database WHERE datname = %s",
                (name,),
            ).fetchone()
            available = {
                r[0]
                for r in raw.execute(
                    "SELECT name::text FROM pg_available_extensions WHERE name = ANY(%s)", (list(desired.extensions),)
                )
            }
        unavailable = tuple(sorted(set(desired.extensions) - available))
        if row is None:
            return DatabaseState(False, unavailable=unavailable, dropped_outside=seen is not None, seen_oid=seen)
        oid, owner, encoding = row
        data_lost = data_lost or (DATA_LOST if seen is not None and seen != oid else None)
        installed: tuple[str, ...] = ()
        if desired.extensions:
            with server.closing_session(url, name) as raw:
                installed = tuple(r[0] for r in raw.execute("SELECT extname::text FROM pg_extension ORDER BY 1"))
        return DatabaseState(True, oid, owner, encoding, installed, unavailable, seen not in (None, oid), data_lost)

    def plan(self, desired: PostgresDatabase, actual: DatabaseState) -> list[Action]:
        if actual.unavailable:
            raise PermanentError(
                f"extensions: {', '.join(actual.unavailable)} cannot be installed on this server "
                "(not in pg_available_extensions): install its package there, or remove it from the list"
            )
        name = database_name(desired)
        url = Redacted(secrets.value(desired.server))
        database = sql.Identifier(name)
        actions: list[Action] = []
        if not actual.exists:
            options = [sql.SQL("ENCODING {} TEMPLATE {}").format(sql.Literal(desired.encoding),
                                                                 sql.Identifier(desired.template))]  # fmt: skip
            if desired.owner is not None:
                options.insert(0, sql.SQL("OWNER {}").format(sql.Identifier(desired.owner)))
            statement = sql.SQL("CREATE DATABASE {} {}").format(database, sql.SQL(" ").join(options))
            says = f"create database {name}" + (f" {DATA_LOST}" if actual.dropped_outside else "")
            actions.append(server.Execute(url, statement, says))
        elif desired.owner is not None and actual.owner != desired.owner:
            statement = sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, sql.Identifier(desired.owner))
            actions.append(
                server.Execute(url, statement, f"alter database {name}: owner {actual.owner} -> {desired.owner}")
            )
        for extension in desired.extensions:
            if extension not in actual.extensions:
                statement = sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension))
                actions.append(server.Execute(url, statement, f"create extension {extension} in {name}", name))
        return actions

    def teardown(self, desired: PostgresDatabase, actual: DatabaseState) -> list[Action]:
        if not actual.exists:
            return []
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database_name(desired)))
        return [
            server.Execute(
                Redacted(secrets.value(desired.server)), statement, f"drop database {database_name(desired)}"
            )
        ]

    def health(self, desired: PostgresDatabase, actual: DatabaseState) -> Health | None:
        if actual.exists and actual.encoding is not None and actual.encoding.upper() != desired.encoding.upper():
            return Health(
                False,
                "EncodingDiffers",
                f"its encoding is {actual.encoding}, not {desired.encoding}: PostgreSQL cannot change it in place",
            )
        if actual.data_lost:
            return Health(True, "DataLost", f"database {database_name(desired)} was {actual.data_lost}")
        return None

    def outputs(self, desired: PostgresDatabase, actual: DatabaseState) -> dict[str, Any]:
        name = database_name(desired)
        published = {"name": name, "url": server.public_url(secrets.value(desired.server), name)}
        oid = actual.oid if actual.oid is not None else actual.seen_oid
        return published | ({"oid": oid} if oid is not None else {})

    def describe(self, actual: DatabaseState) -> dict[str, Any]:
        described = dataclasses.asdict(actual)
        described["extensions"] = list(actual.extensions)
        described["unavailable"] = list(actual.unavailable)
        return described
