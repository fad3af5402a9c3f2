"""The MySQLDatabase kind's controller: the database exists on its server with its character set and collation.

A database holds data, so its rows default to deletion_policy 'orphan' (models/mysql.py): deleting one leaves the
database, and only a row whose policy was set to 'delete' drops it. A database dropped by hand is created again,
empty, and the action says that the data it held was lost (the status's Ready condition and the run's history
show it); the controller knows it was there before from the observation it last published (statuses.observed).
A NULL collation means the character set's default: then only the character set is compared.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import text

from controllers import mysql_server
from controllers.mysql_server import Server, ident, literal
from models.mysql import MySQLDatabase
from worker import side_engine, targets
from worker.controller import Action, Controller, InvalidSpec


def database_of(desired: MySQLDatabase) -> str:
    return desired.external_name or desired.name


@dataclasses.dataclass(frozen=True)
class DatabaseState:
    exists: bool
    character_set: str | None = None
    collation: str | None = None
    dropped_outside: bool = False
    """Missing although an earlier look found it: whatever it held is gone."""


@dataclasses.dataclass(frozen=True)
class Seen:
    state: DatabaseState
    server: Server
    charset_known: bool
    collation_charset: str | None
    """The character set the desired collation belongs to on this server (None: unknown there, or no collation)."""


def _options(conn: Any, character_set: str, collation: str | None) -> str:
    said = f" CHARACTER SET {literal(conn, character_set)}"
    return said + (f" COLLATE {literal(conn, collation)}" if collation else "")


@dataclasses.dataclass(frozen=True)
class CreateDatabase(Action):
    server: Server
    database: str
    character_set: str
    collation: str | None
    lost: bool = False

    def run(self) -> None:
        mysql_server.execute(
            self.server,
            lambda conn: (
                f"CREATE DATABASE IF NOT EXISTS {ident(self.database)}"
                + _options(conn, self.character_set, self.collation)
            ),
        )

    def __str__(self) -> str:
        if self.lost:
            return (
                f"create database {ident(self.database)} on {self.server} again, empty: it was dropped outside "
                "Setpoint and the data it held was lost"
            )
        return f"create database {ident(self.database)} on {self.server}"


@dataclasses.dataclass(frozen=True)
class AlterDatabase(Action):
    server: Server
    database: str
    character_set: str
    collation: str | None

    def run(self) -> None:
        mysql_server.execute(
            self.server,
            lambda conn: f"ALTER DATABASE {ident(self.database)}" + _options(conn, self.character_set, self.collation),
        )

    def __str__(self) -> str:
        collation = f" collation {self.collation}" if self.collation else ""
        return f"set database {ident(self.database)} on {self.server} to character set {self.character_set}{collation}"


@dataclasses.dataclass(frozen=True)
class DropDatabase(Action):
    server: Server
    database: str

    def run(self) -> None:
        mysql_server.execute(self.server, lambda conn: f"DROP DATABASE IF EXISTS {ident(self.database)}")

    def __str__(self) -> str:
        return f"drop database {ident(self.database)} on {self.server} (deletion_policy 'delete')"


_SEEN_BEFORE = text("""
SELECT COALESCE(observed ->> 'exists' = 'true' OR observed ->> 'dropped_outside' = 'true', false)
FROM statuses WHERE kind = :kind AND name = :name AND uid = CAST(:uid AS uuid)
""")


def seen_before(desired: MySQLDatabase) -> bool:
    """Whether this resource's last published observation found the database (or found it dropped)."""
    with side_engine.engine().connect() as conn:
        found = conn.execute(
            _SEEN_BEFORE, {"kind": MySQLDatabase.kind, "name": desired.name, "uid": str(desired.uid)}
        ).scalar()
    return bool(found)


class MySQLDatabaseController(Controller[MySQLDatabase, Seen]):
    model = MySQLDatabase

    def validate(self, desired: MySQLDatabase) -> None:
        mysql_server.check_database("external_name" if desired.external_name else "name", database_of(desired))
        mysql_server.check_charset("character_set", desired.character_set)
        if desired.collation_name is not None:
            mysql_server.check_charset("collation_name", desired.collation_name)

    def observe(self, desired: MySQLDatabase) -> Seen:
        srv = mysql_server.server(desired.server)
        with targets.connect(srv.url.value) as conn:
            row = conn.exec_driver_sql(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                "WHERE SCHEMA_NAME = %s",
                (database_of(desired),),
            ).first()
            known = conn.exec_driver_sql(
                "SELECT 1 FROM information_schema.CHARACTER_SETS WHERE CHARACTER_SET_NAME = %s",
                (desired.character_set,),
            ).first()
            collation_charset = None
            if desired.collation_name:
                collation_charset = conn.exec_driver_sql(
                    "SELECT CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME = %s",
                    (desired.collation_name,),
                ).scalar()
        if row is None:
            state = DatabaseState(exists=False, dropped_outside=seen_before(desired))
        else:
            state = DatabaseState(True, str(row[0]), str(row[1]))
        return Seen(state, srv, known is not None, None if collation_charset is None else str(collation_charset))

    def plan(self, desired: MySQLDatabase, actual: Seen) -> list[Action]:
        charset, collation = (
            desired.character_set.lower(),
            desired.collation_name.lower() if desired.collation_name else None,
        )
        if not actual.charset_known:
            raise InvalidSpec("character_set", f"{charset!r} is not a character set of {actual.server}")
        if collation is not None and actual.collation_charset != charset:
            belongs = f"belongs to {actual.collation_charset!r}" if actual.collation_charset else "is unknown there"
            raise InvalidSpec(
                "collation_name", f"{collation!r} is not a collation of {charset!r} on {actual.server}: it {belongs}"
            )
        database, state = database_of(desired), actual.state
        if not state.exists:
            return [CreateDatabase(actual.server, database, charset, collation, lost=state.dropped_outside)]
        if state.character_set != charset or (collation is not None and state.collation != collation):
            return [AlterDatabase(actual.server, database, charset, collation)]
        return []

    def teardown(self, desired: MySQLDatabase, actual: Seen) -> list[Action]:
        # Only a row whose deletion_policy is 'delete' gets here: an orphaned one leaves no tombstone.
        return [DropDatabase(actual.server, database_of(desired))] if actual.state.exists else []

    def outputs(self, desired: MySQLDatabase, actual: Seen) -> dict[str, Any]:
        return {"name": database_of(desired)}

    def describe(self, actual: Seen) -> dict[str, Any]:
        return dataclasses.asdict(actual.state)
