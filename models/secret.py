"""Secrets: connection URLs, passwords and tokens, kept apart from desired state and never shown.

Desired rows name a secret (a PostgresRole's `password`, any server kind's `server`, an HTTPObject's `headers`,
`{{ Secret/NAME }}` in a workload's env); the worker reads its value at reconcile time and nowhere stores it.
The API's role may write a value but read only its name, its digest and its times (column privileges, migration
0012); changing a value makes every resource that refers to it due at once (SECRET_FUNCTIONS).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import text
from sqlmodel import DateTime, Field, SQLModel

from models.base import NAME_PATTERN, check
from models.triggers import CHANNEL

MAX_SECRET_BYTES = 65_536
DIGEST = "'sha256:' || left(encode(sha256(convert_to(NEW.value, 'UTF8')), 'hex'), 12)"
"""What the CLI and API show of a value: enough to tell two values apart, too little to recover a strong one."""


class Secret(SQLModel, table=True):
    __tablename__: ClassVar[str] = "secrets"  # type: ignore[misc]
    __table_args__ = (
        check(f"name ~ '{NAME_PATTERN}'", "name_format", "lower-case letters, digits, '-', '_' or '.'"),
        check(f"octet_length(value) <= {MAX_SECRET_BYTES}", "value_size", "a value of at most 64 KiB", limit=True),
    )

    name: str = Field(primary_key=True, max_length=253)
    value: str
    digest: str | None = Field(default=None, max_length=64)
    """Set by the database from the value (SECRET_FUNCTIONS), whatever was given."""
    created_at: datetime | None = Field(
        default=None,
        nullable=False,
        sa_type=DateTime(timezone=True),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("now()")},
    )
    updated_at: datetime | None = Field(
        default=None,
        nullable=False,
        sa_type=DateTime(timezone=True),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("now()")},
    )


SECRET_FUNCTIONS = f"""
CREATE FUNCTION setpoint_secret_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text := COALESCE(NEW.name, OLD.name);
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.value IS NOT DISTINCT FROM OLD.value THEN
            RETURN NULL;
        END IF;
    END IF;
    -- Everything that refers to it (a column naming it, or {{{{ Secret/NAME }}}}) is a dependency edge.
    UPDATE statuses AS s SET next_reconcile_at = clock_timestamp()
    FROM dependencies AS d
    WHERE d.on_kind = 'Secret' AND d.on_name = changed AND s.kind = d.kind AND s.name = d.name
      AND s.deleted_at IS NULL;
    IF FOUND THEN
        PERFORM pg_notify('{CHANNEL}', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION setpoint_secret_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.digest := {DIGEST};
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := now();
        NEW.updated_at := now();
    ELSE
        NEW.created_at := OLD.created_at;
        NEW.updated_at := CASE WHEN NEW.value IS DISTINCT FROM OLD.value THEN now() ELSE OLD.updated_at END;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER setpoint_secret_stamp BEFORE INSERT OR UPDATE ON secrets
    FOR EACH ROW EXECUTE FUNCTION setpoint_secret_stamp();
CREATE TRIGGER setpoint_secret_changed AFTER INSERT OR UPDATE OR DELETE ON secrets
    FOR EACH ROW EXECUTE FUNCTION setpoint_secret_changed();

GRANT SELECT ON secrets TO setpoint_worker;
GRANT SELECT (name, digest, created_at, updated_at), INSERT (name, value), UPDATE (value), DELETE
    ON secrets TO setpoint_api;
"""
"""Created by migration 0012: a value changed (or a secret made or removed) makes its referrers due; the worker
reads values, the API writes them and reads everything but them."""

SECRET_AS_OWNER = ("setpoint_secret_changed()",)

DROP_SECRET_FUNCTIONS = """
DROP FUNCTION IF EXISTS setpoint_secret_changed() CASCADE;
DROP FUNCTION IF EXISTS setpoint_secret_stamp() CASCADE;
"""
