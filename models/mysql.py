"""The MySQL/MariaDB kinds: a user, a database and a user's privileges on a database, on a server named by a secret.

Each row's `server` names a secret holding the admin URL (`mysql://root:…@db:3306/`); the real object's name is
the row's `name` unless `external_name` says otherwise (any characters a MySQL name may hold: they are quoted,
never pasted). What identifies the real object (server, external name, host, user and database of a grant) cannot
change once the row exists (IMMUTABLE_SQL): changing it would leave the old object behind, unmanaged; delete the
row and insert a new one instead. The controllers live in controllers/mysql_*.py.
"""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Field

from models.base import Resource, common_constraints


def _server() -> str:
    return Field(
        max_length=253,
        description="The name of the secret holding the server's admin URL (mysql://user:password@host:3306/).",
    )


def _external_name() -> str | None:
    return Field(
        default=None,
        max_length=255,
        description="The object's name on the server when it differs from the row's name (any characters).",
    )


def _host() -> str:
    return Field(
        default="%",
        max_length=255,
        description="The account's host part: '%' (anywhere), 'localhost', '10.0.0.%', …",
        sa_column_kwargs={"server_default": text("'%'")},
    )


class MySQLUser(Resource, table=True):
    __tablename__: ClassVar[str] = "mysql_users"  # type: ignore[misc]
    __table_args__ = common_constraints("mysql_users")
    kind: ClassVar[str] = "MySQLUser"
    secret_fields: ClassVar[tuple[str, ...]] = ("server", "password")

    server: str = _server()
    external_name: str | None = _external_name()
    host: str = _host()
    password: str | None = Field(
        default=None,
        max_length=253,
        description="The name of the secret holding the password; NULL creates the user without one.",
    )


class MySQLDatabase(Resource, table=True):
    __tablename__: ClassVar[str] = "mysql_databases"  # type: ignore[misc]
    __table_args__ = common_constraints("mysql_databases")
    kind: ClassVar[str] = "MySQLDatabase"
    secret_fields: ClassVar[tuple[str, ...]] = ("server",)

    server: str = _server()
    external_name: str | None = _external_name()
    character_set: str = Field(
        default="utf8mb4",
        max_length=64,
        description="The database's default character set.",
        sa_column_kwargs={"server_default": text("'utf8mb4'")},
    )
    collation_name: str | None = Field(
        default=None,
        max_length=64,
        description="Its default collation (not `collation`, a reserved word in PostgreSQL); NULL: the character "
        "set's default.",
    )
    deletion_policy: str = Field(
        default="orphan",
        max_length=16,
        schema_extra={"pattern": "^(delete|orphan)$"},
        description="A database holds data: deleting the row leaves it ('orphan') unless this says 'delete'.",
        sa_column_kwargs={"server_default": text("'orphan'")},
    )


class MySQLGrant(Resource, table=True):
    """A user's privileges on one database, authoritative as Terraform's mysql_grant is: the account holds exactly
    these on that database (a privilege granted there by hand is revoked), so one row per account and database."""

    __tablename__: ClassVar[str] = "mysql_grants"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("mysql_grants"),
        UniqueConstraint(
            "server",
            "user_name",
            "host",
            "database",
            name="uq_mysql_grants_account_database",
            info={"expected": "one grant row per server, account and database"},
        ),
    )
    kind: ClassVar[str] = "MySQLGrant"
    secret_fields: ClassVar[tuple[str, ...]] = ("server",)

    server: str = _server()
    user_name: str = Field(max_length=255, description="The account's user name on the server.")
    host: str = _host()
    database: str = Field(max_length=255, description="The database the privileges apply to (exactly that one).")
    privileges: list[str] = Field(
        sa_type=ARRAY(Text),  # type: ignore[call-overload]
        description="Database privileges: SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, … or ALL.",
    )


IMMUTABLE = {
    "mysql_users": ("server", "external_name", "host"),
    "mysql_databases": ("server", "external_name"),
    "mysql_grants": ("server", "user_name", "host", "database"),
}
"""The columns naming the real object, by table: fixed once the row exists."""

IMMUTABLE_SQL = """
CREATE FUNCTION setpoint_mysql_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    field text;
BEGIN
    FOREACH field IN ARRAY TG_ARGV LOOP
        IF (to_jsonb(NEW) ->> field) IS DISTINCT FROM (to_jsonb(OLD) ->> field) THEN
            RAISE EXCEPTION '% is immutable: % % keeps %', field, TG_TABLE_NAME, OLD.name,
                quote_nullable(to_jsonb(OLD) ->> field)
                USING ERRCODE = 'check_violation', CONSTRAINT = format('ck_%s_%s_immutable', TG_TABLE_NAME, field),
                      HINT = 'It names the object on the server: delete the row and insert a new one instead.';
        END IF;
    END LOOP;
    RETURN NEW;
END $$;
"""


def immutable(table: str) -> str:
    """The trigger refusing a change of the columns that name the real object (after IMMUTABLE_SQL)."""
    args = ", ".join(f"'{column}'" for column in IMMUTABLE[table])
    return f"""
CREATE TRIGGER setpoint_mysql_immutable BEFORE UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION setpoint_mysql_immutable({args});
"""
