"""The PostgreSQL kinds' tables: roles, databases and grants on a server named by a secret (controllers/postgres_*.py).

Each row names its server by a secret holding its URL (`server`), so no desired column holds a credential; the
real object's name is `external_name` when given (any PostgreSQL identifier: quoted, never spliced), else `name`.
A database's owner, and a grant's role and database, are real names; when the role or database is a Setpoint
resource on the same server, a BEFORE trigger of ours (LINKS) adds it to the row's `depends_on`, so a database
waits for its owner and a grant for its role and database, and they are torn down before them.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import Text, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import DateTime, Field

from models.base import NAME_PATTERN, Resource, check, common_constraints

MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL cuts longer identifiers silently (NAMEDATALEN - 1): we refuse them rather than manage another name."""
DATABASE_PRIVILEGES = ("CONNECT", "CREATE", "TEMPORARY")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _server_constraints() -> tuple[object, ...]:
    return (
        check(f"server ~ '{NAME_PATTERN}'", "server_format", "the name of a secret holding the server's URL"),
        check(
            f"external_name IS NULL OR octet_length(external_name) BETWEEN 1 AND {MAX_IDENTIFIER_BYTES}",
            "external_name_length",
            f"a PostgreSQL name of 1 to {MAX_IDENTIFIER_BYTES} bytes",
        ),
        check(
            f"external_name IS NOT NULL OR octet_length(name) <= {MAX_IDENTIFIER_BYTES}",
            "name_length",
            f"a name of at most {MAX_IDENTIFIER_BYTES} bytes, or an external_name",
        ),
    )


def _names(default: str = "'{}'::text[]") -> dict[str, object]:
    return {"server_default": text(default)}


class PostgresRole(Resource, table=True):
    __tablename__: ClassVar[str] = "postgres_roles"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("postgres_roles"),
        *_server_constraints(),
        check(f"password IS NULL OR password ~ '{NAME_PATTERN}'", "password_format", "the name of a secret"),
        check("connection_limit >= -1", "connection_limit_range", "-1 (no limit) or more"),
        check("cardinality(member_of) <= 64", "member_of_size", "at most 64 roles"),
    )
    kind: ClassVar[str] = "PostgresRole"
    secret_fields: ClassVar[tuple[str, ...]] = ("server", "password")

    server: str = Field(max_length=253, description="The secret holding the server's URL (postgresql://…).")
    external_name: str | None = Field(default=None, max_length=MAX_IDENTIFIER_BYTES)
    """The role's name on the server, if not the resource's name."""
    login: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    password: str | None = Field(default=None, max_length=253)
    """The secret holding the role's password; NULL means the role has none."""
    createdb: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    createrole: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    connection_limit: int = Field(default=-1, sa_column_kwargs={"server_default": text("-1")})
    valid_until: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),  # type: ignore[call-overload]
        description="When its password stops being accepted; NULL means never.",
    )
    member_of: list[str] = Field(
        default_factory=list,
        sa_type=ARRAY(Text),  # type: ignore[call-overload]
        sa_column_kwargs=_names(),
        description="The roles it is a member of, and no others (GRANT parent TO role).",
    )


class PostgresDatabase(Resource, table=True):
    __tablename__: ClassVar[str] = "postgres_databases"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("postgres_databases"),
        *_server_constraints(),
        check("cardinality(extensions) <= 64", "extensions_size", "at most 64 extensions"),
    )
    kind: ClassVar[str] = "PostgresDatabase"
    secret_fields: ClassVar[tuple[str, ...]] = ("server",)
    templated: ClassVar[tuple[str, ...]] = ("owner",)

    deletion_policy: str = Field(
        default="orphan",
        max_length=16,
        schema_extra={"pattern": "^(delete|orphan)$"},
        description="A database holds data: deleting its row leaves it ('orphan') unless this says 'delete'.",
        sa_column_kwargs={"server_default": text("'orphan'")},
    )
    server: str = Field(max_length=253, description="The secret holding the server's URL (postgresql://…).")
    external_name: str | None = Field(default=None, max_length=MAX_IDENTIFIER_BYTES)
    """The database's name on the server, if not the resource's name."""
    owner: str | None = Field(default=None, max_length=512)
    """The owning role's name (or `{{ PostgresRole/app.outputs.name }}`); NULL: the server's user."""
    encoding: str = Field(default="UTF8", max_length=32, sa_column_kwargs={"server_default": text("'UTF8'")})
    template: str = Field(
        default="template0", max_length=MAX_IDENTIFIER_BYTES, sa_column_kwargs={"server_default": text("'template0'")}
    )
    extensions: list[str] = Field(
        default_factory=list,
        sa_type=ARRAY(Text),  # type: ignore[call-overload]
        sa_column_kwargs=_names(),
        description="Extensions kept installed in the database (one removed from the list is left installed).",
    )


class PostgresGrant(Resource, table=True):
    __tablename__: ClassVar[str] = "postgres_grants"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("postgres_grants"),
        check(f"server ~ '{NAME_PATTERN}'", "server_format", "the name of a secret holding the server's URL"),
        check("cardinality(privileges) <= 16", "privileges_size", "at most 16 privileges"),
        check("cardinality(table_privileges) <= 16", "table_privileges_size", "at most 16 privileges"),
        check(
            "schema_name IS NOT NULL OR cardinality(table_privileges) = 0",
            "table_privileges_schema",
            "table_privileges only with a schema_name",
        ),
    )
    kind: ClassVar[str] = "PostgresGrant"
    secret_fields: ClassVar[tuple[str, ...]] = ("server",)
    templated: ClassVar[tuple[str, ...]] = ("role", "database")

    server: str = Field(max_length=253, description="The secret holding the server's URL (postgresql://…).")
    role: str = Field(max_length=512, description="The role granted the privileges (its real name).")
    database: str = Field(max_length=512, description="The database they are on (its real name).")
    privileges: list[str] = Field(
        default_factory=list,
        sa_type=ARRAY(Text),  # type: ignore[call-overload]
        sa_column_kwargs=_names(),
        description="On the database: CONNECT, CREATE, TEMPORARY.",
    )
    schema_name: str | None = Field(default=None, max_length=MAX_IDENTIFIER_BYTES)
    """A schema of the database whose tables (present and future) get table_privileges."""
    table_privileges: list[str] = Field(
        default_factory=list,
        sa_type=ARRAY(Text),  # type: ignore[call-overload]
        sa_column_kwargs=_names(),
        description="On all tables of the schema: SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER.",
    )


LINKS = """
CREATE FUNCTION setpoint_postgres_links() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lookup text := 'SELECT name FROM %I WHERE COALESCE(external_name, name) = $1 AND server = $2';
    i integer := 0;
    col text;
    found_name text;
BEGIN
    -- TG_ARGV holds triples (column, table, kind): a column naming a role or database that a row of `table` on the
    -- same server manages makes this row depend on it (the link trigger then records the dependency).
    WHILE i < TG_NARGS LOOP
        col := TG_ARGV[i];
        IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) ->> col) IS DISTINCT FROM (to_jsonb(NEW) ->> col) THEN
            EXECUTE format(lookup, TG_ARGV[i + 1])
                INTO found_name USING to_jsonb(OLD) ->> col, OLD.server;
            NEW.depends_on := array_remove(NEW.depends_on, TG_ARGV[i + 2] || '/' || found_name);
        END IF;
        EXECUTE format(lookup, TG_ARGV[i + 1])
            INTO found_name USING to_jsonb(NEW) ->> col, NEW.server;
        IF found_name IS NOT NULL AND NOT (TG_ARGV[i + 2] || '/' || found_name) = ANY(NEW.depends_on) THEN
            NEW.depends_on := NEW.depends_on || (TG_ARGV[i + 2] || '/' || found_name);
        END IF;
        i := i + 3;
    END LOOP;
    RETURN NEW;
END $$;

-- Named to fire before setpoint_refs (BEFORE triggers fire in name order), which spells depends_on canonically.
CREATE TRIGGER setpoint_postgres_links BEFORE INSERT OR UPDATE ON postgres_databases
    FOR EACH ROW EXECUTE FUNCTION setpoint_postgres_links('owner', 'postgres_roles', 'PostgresRole');
CREATE TRIGGER setpoint_postgres_links BEFORE INSERT OR UPDATE ON postgres_grants
    FOR EACH ROW EXECUTE FUNCTION setpoint_postgres_links('role', 'postgres_roles', 'PostgresRole',
                                                          'database', 'postgres_databases', 'PostgresDatabase');
"""
"""Created by migration 0013: a database depends on its owner's PostgresRole, a grant on its role's and database's,
when the row is written after them (a reference such as `{{ PostgresRole/app.outputs.name }}` works in any order)."""

LINKS_AS_OWNER = ("setpoint_postgres_links()",)

DROP_LINKS = "DROP FUNCTION IF EXISTS setpoint_postgres_links() CASCADE;"
