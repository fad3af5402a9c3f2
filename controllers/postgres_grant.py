"""The PostgresGrant kind's controller: a role's privileges on a database and, optionally, on all tables of one
of its schemas, present and future (ALTER DEFAULT PRIVILEGES).

As Terraform's postgresql_grant, a row is authoritative for its role on its object: privileges of the listed kinds
that the role holds there beyond the list are revoked, and those revoked by hand are granted again. Observed from
the ACLs themselves (aclexplode of pg_database.datacl, pg_class.relacl, pg_default_acl), not from has_*_privilege,
which would count what PUBLIC or another role gives. Privileges are checked against fixed lists and written as
keywords; role, database and schema are quoted identifiers. Default privileges apply to tables that the server's
user (the one in the server's URL) creates later, as ALTER DEFAULT PRIVILEGES without FOR ROLE does. Deleting the
row revokes what it lists, and nothing else. Two rows for the same role and object would undo each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from psycopg import sql

from controllers import postgres_server as server
from models.postgres import DATABASE_PRIVILEGES, TABLE_PRIVILEGES, PostgresGrant
from setpoint.errors import TransientError
from worker import secrets
from worker.controller import Action, Controller
from worker.secrets import Redacted

ALIASES = {"TEMP": "TEMPORARY"}

DATABASE_ACL = """
SELECT a.privilege_type FROM pg_database AS d, aclexplode(d.datacl) AS a
WHERE d.datname = %s AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)
"""
TABLES_LACKING = """
SELECT DISTINCT wanted.p FROM pg_class AS c, unnest(%s::text[]) AS wanted(p)
WHERE c.relnamespace = %s::oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT EXISTS (SELECT FROM aclexplode(c.relacl) AS a
                  WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s) AND a.privilege_type = wanted.p)
"""
TABLES_HELD = """
SELECT DISTINCT a.privilege_type FROM pg_class AS c, aclexplode(c.relacl) AS a
WHERE c.relnamespace = %s::oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)
"""
DEFAULT_ACL = """
SELECT a.privilege_type FROM pg_default_acl AS d, aclexplode(d.defaclacl) AS a
WHERE d.defaclnamespace = %s::oid AND d.defaclobjtype = 'r'
  AND d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)
"""


@dataclasses.dataclass(frozen=True)
class GrantState:
    role_exists: bool
    database_exists: bool
    schema_exists: bool = False
    privileges: tuple[str, ...] = ()
    """What the role holds on the database itself (its ACL entries, not PUBLIC's)."""
    tables_lacking: tuple[str, ...] = ()
    """Wanted table privileges that at least one table of the schema does not give the role."""
    tables_held: tuple[str, ...] = ()
    """Table privileges the role holds on at least one table of the schema."""
    default_privileges: tuple[str, ...] = ()


def privileges(field: str, values: list[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The privileges as keywords from the allow-list (upper-case, aliases resolved); InvalidSpec for any other."""
    found = []
    for value in values:
        keyword = ALIASES.get(value.strip().upper(), value.strip().upper())
        found.append(server.check_keyword(field, keyword, allowed))
    return tuple(sorted(set(found)))


def _list(keywords: tuple[str, ...] | set[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL(keyword) for keyword in sorted(keywords))  # keywords from the allow-lists only


class PostgresGrantController(Controller[PostgresGrant, GrantState]):
    model = PostgresGrant

    def validate(self, desired: PostgresGrant) -> None:
        server.check_name("role", desired.role)
        server.check_name("database", desired.database)
        if desired.schema_name is not None:
            server.check_name("schema_name", desired.schema_name, reserved=())
        privileges("privileges", desired.privileges, DATABASE_PRIVILEGES)
        privileges("table_privileges", desired.table_privileges, TABLE_PRIVILEGES)

    def observe(self, desired: PostgresGrant) -> GrantState:
        url = secrets.value(desired.server)
        with server.session(url) as raw:
            role = raw.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (desired.role,)).fetchone() is not None
            database = raw.execute("SELECT 1 FROM pg_database WHERE datname = %s", (desired.database,)).fetchone()
            held = tuple(sorted(r[0] for r in raw.execute(DATABASE_ACL, (desired.database, desired.role))))
        if not (role and database and desired.schema_name is not None):
            return GrantState(role, database is not None, privileges=held)
        wanted = list(privileges("table_privileges", desired.table_privileges, TABLE_PRIVILEGES))
        with server.closing_session(url, desired.database) as raw:
            schema = raw.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", (desired.schema_name,)).fetchone()
            if schema is None:
                return GrantState(True, True, False, held)
            lacking = tuple(sorted(r[0] for r in raw.execute(TABLES_LACKING, (wanted, schema[0], desired.role))))
            on_tables = tuple(sorted(r[0] for r in raw.execute(TABLES_HELD, (schema[0], desired.role))))
            defaults = tuple(sorted(r[0] for r in raw.execute(DEFAULT_ACL, (schema[0], desired.role))))
        return GrantState(True, True, True, held, lacking, on_tables, defaults)

    def plan(self, desired: PostgresGrant, actual: GrantState) -> list[Action]:
        if not actual.role_exists:
            raise TransientError(f"role {desired.role!r} does not exist on the server (yet)")
        if not actual.database_exists:
            raise TransientError(f"database {desired.database!r} does not exist on the server (yet)")
        if desired.schema_name is not None and not actual.schema_exists:
            raise TransientError(
                f"schema {desired.schema_name!r} does not exist in database {desired.database!r} (yet)"
            )
        url = Redacted(secrets.value(desired.server))
        role, database = sql.Identifier(desired.role), sql.Identifier(desired.database)
        on_database = set(privileges("privileges", desired.privileges, DATABASE_PRIVILEGES))
        actions: list[Action] = []
        held = set(actual.privileges) & set(DATABASE_PRIVILEGES)
        if on_database - held:
            statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(_list(on_database - held), database, role)
            says = f"grant {', '.join(sorted(on_database - held))} on database {desired.database} to {desired.role}"
            actions.append(server.Execute(url, statement, says))
        if held - on_database:
            statement = sql.SQL("REVOKE {} ON DATABASE {} FROM {}").format(_list(held - on_database), database, role)
            says = f"revoke {', '.join(sorted(held - on_database))} on database {desired.database} from {desired.role}"
            actions.append(server.Execute(url, statement, says))
        if desired.schema_name is not None:
            actions += self._tables(desired, actual, url)
        return actions

    def _tables(self, desired: PostgresGrant, actual: GrantState, url: Redacted) -> list[Action]:
        assert desired.schema_name is not None
        wanted = set(privileges("table_privileges", desired.table_privileges, TABLE_PRIVILEGES))
        schema, role, where = sql.Identifier(desired.schema_name), sql.Identifier(desired.role), desired.database
        scope = f"tables in schema {desired.schema_name} of {desired.database}"
        actions: list[Action] = []
        if actual.tables_lacking:
            statement = sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(_list(wanted), schema, role)
            says = f"grant {', '.join(actual.tables_lacking)} on all {scope} to {desired.role}"
            actions.append(server.Execute(url, statement, says, where))
        extra = set(actual.tables_held) - wanted
        if extra:
            statement = sql.SQL("REVOKE {} ON ALL TABLES IN SCHEMA {} FROM {}").format(_list(extra), schema, role)
            says = f"revoke {', '.join(sorted(extra))} on all {scope} from {desired.role}"
            actions.append(server.Execute(url, statement, says, where))
        defaults = set(actual.default_privileges)
        if wanted - defaults:
            statement = sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT {} ON TABLES TO {}").format(
                schema, _list(wanted), role
            )
            says = f"grant {', '.join(sorted(wanted - defaults))} on future {scope} to {desired.role}"
            actions.append(server.Execute(url, statement, says, where))
        if defaults - wanted:
            statement = sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} REVOKE {} ON TABLES FROM {}").format(
                schema, _list(defaults - wanted), role
            )
            says = f"revoke {', '.join(sorted(defaults - wanted))} on future {scope} from {desired.role}"
            actions.append(server.Execute(url, statement, says, where))
        return actions

    def teardown(self, desired: PostgresGrant, actual: GrantState) -> list[Action]:
        """Revoke what the row lists, and only that; nothing if the role or database is already gone."""
        if not (actual.role_exists and actual.database_exists):
            return []
        url = Redacted(secrets.value(desired.server))
        role, database = sql.Identifier(desired.role), sql.Identifier(desired.database)
        listed = _known(desired.privileges, DATABASE_PRIVILEGES)
        actions: list[Action] = []
        if listed:
            statement = sql.SQL("REVOKE {} ON DATABASE {} FROM {}").format(_list(listed), database, role)
            says = f"revoke {', '.join(listed)} on database {desired.database} from {desired.role}"
            actions.append(server.Execute(url, statement, says))
        on_tables = _known(desired.table_privileges, TABLE_PRIVILEGES)
        if desired.schema_name is not None and actual.schema_exists and on_tables:
            schema = sql.Identifier(desired.schema_name)
            scope = f"tables in schema {desired.schema_name} of {desired.database}"
            statement = sql.SQL("REVOKE {} ON ALL TABLES IN SCHEMA {} FROM {}").format(_list(on_tables), schema, role)
            actions.append(
                server.Execute(url, statement, f"revoke {', '.join(on_tables)} on all {scope}", desired.database)
            )
            statement = sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} REVOKE {} ON TABLES FROM {}").format(
                schema, _list(on_tables), role
            )
            actions.append(
                server.Execute(url, statement, f"revoke {', '.join(on_tables)} on future {scope}", desired.database)
            )
        return actions

    def outputs(self, desired: PostgresGrant, actual: GrantState) -> dict[str, Any]:
        return {"role": desired.role, "database": desired.database}

    def describe(self, actual: GrantState) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(actual).items()
        }


def _known(values: list[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The listed privileges that are on the allow-list (a row refused as invalid never granted the others)."""
    upper = {ALIASES.get(v.strip().upper(), v.strip().upper()) for v in values}
    return tuple(sorted(upper & set(allowed)))
