"""Desired-state history: one `changes` row per insert, update or delete of a desired row, and who made it.

A trigger on every kind's table (and on `secrets`) records the operation, the columns that changed with their old
and new values (one longer than 2 KiB as its digest and size, so a change costs about one row), the whole desired
row after the change (before it, for a delete: what a diff or a rollback needs), and who did it: the database user,
`application_name` and client address, and, when the transaction set them, `setpoint.actor` and `setpoint.reason`
(`stamp` sets both; the CLI, the REST API and the worker call it). An UPDATE that leaves the generation alone (a
no-op write) records nothing and costs nothing: the trigger's WHEN clause skips it. A secret's value is never recorded:
its digest stands in for it.

Migration 0016 creates these and attaches them to every kind there is; `triggers.attach` calls `attach` for a kind
created later. The scheduler prunes the table (scheduler/retention.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, Connection, Engine, Index, Text, Uuid, event, text
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlmodel import DateTime, Field, SQLModel

from models.base import check
from models.triggers import BOOKKEEPING

OPERATIONS = ("insert", "update", "delete", "reconcile")
"""`reconcile`: someone asked for a reconcile now (setpoint_reconcile_now): desired state unchanged, but who asked
belongs in the same history."""
MAX_ACTOR = 256
MAX_REASON = 1024
"""How much of `setpoint.actor` and `setpoint.reason` is kept (the trigger cuts what is longer)."""


class Change(SQLModel, table=True):
    __tablename__: ClassVar[str] = "changes"  # type: ignore[misc]
    __table_args__ = (
        check(
            "operation IN ('" + "', '".join(OPERATIONS) + "')", "operation_known", "insert, update, delete or reconcile"
        ),
        Index("ix_changes_resource", "kind", "name", "id"),
        # The retention rule finds the resources deleted long ago without reading every change.
        Index("ix_changes_deleted", "at", postgresql_where=text("operation = 'delete'")),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)  # type: ignore[call-overload]
    at: datetime = Field(
        sa_type=DateTime(timezone=True),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("now()")},
    )
    kind: str = Field(max_length=63)
    name: str = Field(max_length=253)
    uid: uuid.UUID | None = Field(default=None, sa_type=Uuid)  # type: ignore[call-overload]
    """The resource's uid; NULL for a secret (which has none: its name is its identity)."""
    generation: int | None = None
    """The generation the change made (the one it removed, for a delete); NULL for a secret."""
    operation: str = Field(max_length=16)
    changed: dict[str, Any] = Field(
        default_factory=dict,
        sa_type=JSONB,  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'{}'::jsonb")},
    )
    """{column: {"old": …, "new": …}} for each desired column that changed (bookkeeping columns left out); a value
    longer than BIG_VALUE_BYTES as {"digest": "sha256:<hex>", "bytes": n}: `desired` has it whole, and `setpoint
    diff` and a rollback read the desired rows."""
    desired: dict[str, Any] | None = Field(default=None, sa_type=JSONB)  # type: ignore[call-overload]
    """The desired row after the change, or before it for a delete (bookkeeping columns left out)."""
    db_user: str = Field(sa_type=Text)  # type: ignore[call-overload]
    application_name: str | None = Field(default=None, sa_type=Text)  # type: ignore[call-overload]
    client_addr: str | None = Field(default=None, sa_type=INET)  # type: ignore[call-overload]
    actor: str | None = Field(default=None, max_length=MAX_ACTOR)
    reason: str | None = Field(default=None, max_length=MAX_REASON)


def _setting(name: str, limit: int) -> str:
    """A transaction's setting as the trigger records it: control characters dropped, cut to `limit`, '' as NULL."""
    return f"NULLIF(left(regexp_replace(current_setting('{name}', true), '[[:cntrl:]]', '', 'g'), {limit}), '')"


_DIGEST = "'sha256:' || left(encode(sha256(convert_to({} ->> 'value', 'UTF8')), 'hex'), 12)"

BIG_VALUE_BYTES = 2048
"""A value in `changed` longer than this is recorded as {"digest": "sha256:<hex>", "bytes": n} (the desired row
keeps it whole). So a change costs its desired row plus at most 2 x 2 KiB per changed column, and a resource at
most SETPOINT_HISTORY_CHANGES_KEPT times that: 100 changes of a file of 64 KiB hold about 6.5 MiB, not 19."""


def _bounded(value: str) -> str:
    """SQL: the jsonb `value` as `changed` records it: itself, or when longer than BIG_VALUE_BYTES (a string's
    text, or any other value's JSON), its digest and size."""
    measured = f"CASE jsonb_typeof({value}) WHEN 'string' THEN {value} #>> '{{}}' ELSE ({value})::text END"
    return (
        f"CASE WHEN {value} IS NULL OR octet_length({measured}) <= {BIG_VALUE_BYTES} THEN {value} "
        f"ELSE jsonb_build_object('digest', 'sha256:' || encode(sha256(convert_to({measured}, 'UTF8')), 'hex'), "
        f"'bytes', octet_length({measured})) END"
    )


FUNCTIONS = f"""
CREATE FUNCTION setpoint_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before jsonb;
    after jsonb;
    said jsonb;
    diff jsonb;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        before := to_jsonb(OLD);
        said := before;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        after := to_jsonb(NEW);
        said := after;
    END IF;
    before := before - {BOOKKEEPING};
    after := after - {BOOKKEEPING};
    IF TG_ARGV[1] = 'secret' THEN  -- the value never: its digest, as `secrets.digest` shows it
        before := (before - 'digest') || jsonb_build_object('value', {_DIGEST.format("before")});
        after := (after - 'digest') || jsonb_build_object('value', {_DIGEST.format("after")});
    END IF;
    SELECT COALESCE(jsonb_object_agg(k, jsonb_build_object('old', {_bounded("before -> k")},
                                                           'new', {_bounded("after -> k")})), '{{}}')
    INTO diff
    FROM jsonb_object_keys(COALESCE(before, '{{}}') || COALESCE(after, '{{}}')) AS k
    WHERE k NOT IN ('name', 'uid') AND COALESCE(before -> k, 'null') IS DISTINCT FROM COALESCE(after -> k, 'null');
    INSERT INTO changes (kind, name, uid, generation, operation, changed, desired,
                         db_user, application_name, client_addr, actor, reason)
    VALUES (TG_ARGV[0], said ->> 'name', (said ->> 'uid')::uuid, (said ->> 'generation')::integer, lower(TG_OP),
            diff, COALESCE(after, before), session_user, NULLIF(current_setting('application_name', true), ''),
            inet_client_addr(), {_setting("setpoint.actor", MAX_ACTOR)}, {_setting("setpoint.reason", MAX_REASON)});
    RETURN NULL;
END $$;

CREATE FUNCTION setpoint_reconcile_now(wanted_kind text, wanted_name text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    found_uid uuid;
    found_generation integer;
BEGIN
    UPDATE statuses SET next_reconcile_at = now() WHERE kind = wanted_kind AND name = wanted_name
    RETURNING uid, generation INTO found_uid, found_generation;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO changes (kind, name, uid, generation, operation, db_user, application_name, client_addr, actor, reason)
    VALUES (wanted_kind, wanted_name, found_uid, found_generation, 'reconcile', session_user,
            NULLIF(current_setting('application_name', true), ''), inet_client_addr(),
            {_setting("setpoint.actor", MAX_ACTOR)}, {_setting("setpoint.reason", MAX_REASON)});
    RETURN true;
END $$;

CREATE TRIGGER setpoint_change_written AFTER INSERT OR DELETE ON secrets
    FOR EACH ROW EXECUTE FUNCTION setpoint_record_change('Secret', 'secret');
CREATE TRIGGER setpoint_change_updated AFTER UPDATE ON secrets
    FOR EACH ROW WHEN (NEW.value IS DISTINCT FROM OLD.value)
    EXECUTE FUNCTION setpoint_record_change('Secret', 'secret');

GRANT SELECT ON changes TO setpoint_api;
GRANT SELECT, DELETE ON changes TO setpoint_scheduler;
"""
"""Created by migration 0016 (after the table): the trigger function, run as its owner so that whoever writes a
desired row needs no right on `changes`; the API reads history, the scheduler prunes it."""

AS_OWNER = ("setpoint_record_change()",)
RECONCILE_AS_OWNER = ("setpoint_reconcile_now(text, text)",)
"""Reconcile now, recorded as a change: run as its owner, callable by the API (the CLI logs in as the owner)."""

DROP_FUNCTIONS = """
DROP TRIGGER IF EXISTS setpoint_change_updated ON secrets;
DROP TRIGGER IF EXISTS setpoint_change_written ON secrets;
DROP FUNCTION IF EXISTS setpoint_record_change();
DROP FUNCTION IF EXISTS setpoint_reconcile_now(text, text);
"""


def attach(table: str, kind: str) -> str:
    """The history triggers on a kind's table (part of triggers.attach); before migration 0016 has run (its own
    migrations' time) they are not made: 0016 attaches them to every kind there is."""
    return f"""
DO $$ BEGIN
    IF to_regproc('setpoint_record_change') IS NOT NULL THEN
        CREATE TRIGGER setpoint_change_written AFTER INSERT OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION setpoint_record_change('{kind}');
        CREATE TRIGGER setpoint_change_updated AFTER UPDATE ON {table}
            FOR EACH ROW WHEN (NEW.generation IS DISTINCT FROM OLD.generation)
            EXECUTE FUNCTION setpoint_record_change('{kind}');
    END IF;
END $$;
"""


def detach(table: str) -> str:
    return "".join(
        f"DROP TRIGGER IF EXISTS {trigger} ON {table};\n"
        for trigger in ("setpoint_change_updated", "setpoint_change_written")
    )


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(said: str | None, limit: int) -> str:
    """What a person typed or a client sent, as history keeps it: no control characters, at most `limit`."""
    return CONTROL.sub("", said or "")[:limit]


_STAMP = text("SELECT set_config('setpoint.actor', :actor, true), set_config('setpoint.reason', :reason, true)")


def stamp(conn: Connection, actor: str, reason: str | None = None) -> None:
    """Say who makes the changes of `conn`'s current transaction, and why: its `changes` rows record both."""
    conn.execute(_STAMP, {"actor": clean(actor, MAX_ACTOR), "reason": clean(reason, MAX_REASON)})


_acting: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar("acting", default=None)


@contextlib.contextmanager
def acting(actor: str, reason: str | None = None) -> Iterator[None]:
    """Within this block, every transaction begun on an engine given to `track` is stamped with actor and reason."""
    token = _acting.set((actor, reason))
    try:
        yield
    finally:
        _acting.reset(token)


def track(engine: Engine) -> Engine:
    """Stamp `engine`'s transactions begun inside `acting(...)` (the others cost nothing)."""
    if not event.contains(engine, "begin", _stamp_begun):
        event.listen(engine, "begin", _stamp_begun)
    return engine


def _stamp_begun(conn: Connection) -> None:
    who = _acting.get()
    if who is not None:
        stamp(conn, *who)
