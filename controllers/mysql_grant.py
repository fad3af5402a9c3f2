"""The MySQLGrant kind's controller: an account holds exactly the listed privileges on one database.

Authoritative for that account and database, as Terraform's mysql_grant: what SHOW GRANTS lists there beyond the
row is revoked, what it lacks (a REVOKE by hand) granted again; deleting the row revokes what it lists and nothing
else. The database is granted by its exact name: `_` and `%`, wildcards in a GRANT, are escaped, so a grant on
`app_db` never reaches `appXdb`. Privileges come from an allow-list and reach the server as its own spelling.
The account must exist: until it does the grant fails and is retried (name the MySQLUser in depends_on).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from controllers import mysql_server
from controllers.mysql_server import Server, account, grant_pattern, ident, shown_account
from models.mysql import MySQLGrant
from worker import targets
from worker.controller import Action, Controller, InvalidSpec, TransientError

ALL = "ALL PRIVILEGES"
PRIVILEGES = frozenset({
    "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "REFERENCES", "INDEX", "ALTER",
    "CREATE TEMPORARY TABLES", "LOCK TABLES", "EXECUTE", "CREATE VIEW", "SHOW VIEW", "CREATE ROUTINE",
    "ALTER ROUTINE", "EVENT", "TRIGGER", "DELETE HISTORY", "SHOW CREATE ROUTINE", ALL,
})  # fmt: skip
"""What may be granted on a database (GRANT OPTION and server-wide privileges may not)."""
GRANT_LINE = re.compile(r"GRANT (?P<privileges>.+?) ON (?P<database>`(?:[^`]|``)*`)\.\* TO ")
"""A database-level line of SHOW GRANTS, its database in backticks (each backtick inside doubled)."""


def normalized(privilege: str) -> str:
    said = " ".join(privilege.upper().split())
    return ALL if said == "ALL" else said


def wanted(desired: MySQLGrant) -> frozenset[str]:
    privileges = frozenset(normalized(p) for p in desired.privileges)
    return frozenset({ALL}) if ALL in privileges else privileges


@dataclasses.dataclass(frozen=True)
class GrantState:
    user_exists: bool
    privileges: tuple[str, ...] = ()
    """What the account holds on the database, sorted, as SHOW GRANTS spells it (ALL PRIVILEGES when all)."""


@dataclasses.dataclass(frozen=True)
class Seen:
    state: GrantState
    server: Server


@dataclasses.dataclass(frozen=True)
class Grant(Action):
    server: Server
    user: str
    host: str
    database: str
    privileges: tuple[str, ...]

    def run(self) -> None:
        mysql_server.execute(
            self.server,
            lambda conn: (
                f"GRANT {', '.join(self.privileges)} ON {ident(grant_pattern(self.database))}.* "
                f"TO {account(conn, self.user, self.host)}"
            ),
        )

    def __str__(self) -> str:
        return (
            f"grant {', '.join(self.privileges)} on {ident(self.database)} to "
            f"{shown_account(self.user, self.host)} on {self.server}"
        )


@dataclasses.dataclass(frozen=True)
class Revoke(Action):
    server: Server
    user: str
    host: str
    database: str
    privileges: tuple[str, ...]

    def run(self) -> None:
        mysql_server.execute(
            self.server,
            lambda conn: (
                f"REVOKE {', '.join(self.privileges)} ON {ident(grant_pattern(self.database))}.* "
                f"FROM {account(conn, self.user, self.host)}"
            ),
        )

    def __str__(self) -> str:
        return (
            f"revoke {', '.join(self.privileges)} on {ident(self.database)} from "
            f"{shown_account(self.user, self.host)} on {self.server}"
        )


def parse_grants(lines: list[str], database: str) -> frozenset[str]:
    """The privileges SHOW GRANTS lists on exactly `database` (spelled as a GRANT pattern)."""
    held: set[str] = set()
    for line in lines:
        found = GRANT_LINE.match(line)
        if found and found["database"][1:-1].replace("``", "`") == grant_pattern(database):
            held.update(normalized(p) for p in found["privileges"].split(","))
    return frozenset(held)


class MySQLGrantController(Controller[MySQLGrant, Seen]):
    model = MySQLGrant

    def validate(self, desired: MySQLGrant) -> None:
        mysql_server.check_user("user_name", desired.user_name)
        mysql_server.check_host("host", desired.host)
        mysql_server.check_database("database", desired.database)
        if not desired.privileges:
            raise InvalidSpec("privileges", "at least one privilege, such as SELECT")
        refused = [p for p in desired.privileges if normalized(p) not in PRIVILEGES]
        if refused:
            allowed = ", ".join(sorted(PRIVILEGES))
            raise InvalidSpec(
                "privileges", f"{', '.join(map(repr, refused))}: not a database privilege; allowed: {allowed}"
            )

    def observe(self, desired: MySQLGrant) -> Seen:
        srv = mysql_server.server(desired.server)
        user, host = desired.user_name, desired.host
        with targets.connect(srv.url.value) as conn:
            exists = conn.exec_driver_sql(
                "SELECT 1 FROM mysql.user WHERE User = %s AND Host = %s", (user, host)
            ).first()
            if exists is None:
                return Seen(GrantState(user_exists=False), srv)
            conn.exec_driver_sql("SET SESSION sql_quote_show_create = 1")  # names in backticks, always
            lines = [str(row[0]) for row in conn.exec_driver_sql("SHOW GRANTS FOR %s@%s", (user, host))]
        return Seen(GrantState(True, tuple(sorted(parse_grants(lines, desired.database)))), srv)

    def plan(self, desired: MySQLGrant, actual: Seen) -> list[Action]:
        user, host, database = desired.user_name, desired.host, desired.database
        if not actual.state.user_exists:
            raise TransientError(
                f"user {shown_account(user, host)} does not exist on {actual.server} yet "
                "(a MySQLUser this grant needs belongs in its depends_on)"
            )
        want, have = wanted(desired), frozenset(actual.state.privileges)
        if want == have:
            return []
        srv = actual.server
        if ALL in want:
            return [Grant(srv, user, host, database, (ALL,))]
        extra = frozenset({ALL}) if ALL in have else have - want
        missing = want if ALL in have else want - have
        actions: list[Action] = []
        if extra:  # first: revoking ALL PRIVILEGES takes what is then granted again with it
            actions.append(Revoke(srv, user, host, database, tuple(sorted(extra))))
        if missing:
            actions.append(Grant(srv, user, host, database, tuple(sorted(missing))))
        return actions

    def teardown(self, desired: MySQLGrant, actual: Seen) -> list[Action]:
        """Revoke what the row grants, as far as the account still holds it; nothing else it holds there."""
        have = frozenset(actual.state.privileges)
        if not actual.state.user_exists or not have:
            return []
        want = wanted(desired)
        granted = want if ALL in want or ALL in have else want & have
        if not granted:
            return []
        return [Revoke(actual.server, desired.user_name, desired.host, desired.database, tuple(sorted(granted)))]

    def outputs(self, desired: MySQLGrant, actual: Seen) -> dict[str, Any]:
        return {"user": desired.user_name, "host": desired.host, "database": desired.database}

    def describe(self, actual: Seen) -> dict[str, Any]:
        return dataclasses.asdict(actual.state)
