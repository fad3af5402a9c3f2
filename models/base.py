"""The columns every kind of desired state shares, and the naming rules that keep constraint names stable."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import CheckConstraint, FetchedValue, MetaData, Text, Uuid, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.mutable import MutableDict
from sqlmodel import DateTime, Field, SQLModel

# Set before any table is defined, so Alembic sees the same constraint names on every machine.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$"
"""Names are what an admin types in SQL and a shell: lower-case letters, digits, '-', '_' and '.', as in Kubernetes."""
MAX_DEPENDENCIES = 64
"""How many resources one may depend on (its `depends_on` plus the references in its fields)."""


MAX_INTERVAL_SECONDS = 604_800
"""A week: the longest reconcile period a resource may ask for (its next reconcile is never further away)."""
MAX_JSON_DEPTH = 16
"""How deeply a JSON column (labels, a workload's env) may nest objects and arrays; the column itself is level 1."""
MAX_JSON_BYTES = 65_536
"""The most a JSON column may hold, as PostgreSQL stores it (pg_column_size)."""


def json_limits(column: str, what: str) -> tuple[CheckConstraint, ...]:
    """CHECK constraints that keep a JSON column readable by every client: not too deep, not too large.

    `setpoint_jsonb_depth` is created by migration 0005; a kind's own migration runs after it.
    """
    return (
        check(
            f"setpoint_jsonb_depth({column}, {MAX_JSON_DEPTH}) <= {MAX_JSON_DEPTH}",
            f"{column}_depth",
            f"{what} nested at most {MAX_JSON_DEPTH} levels deep",
            limit=True,
        ),
        check(
            f"pg_column_size({column}) <= {MAX_JSON_BYTES}", f"{column}_size", f"{what} of at most 64 KiB", limit=True
        ),
    )


def check(sql: str, name: str, expected: str, *, limit: bool = False) -> CheckConstraint:
    """A CHECK constraint that knows what it expects, for error messages (named `<field>_<rule>`).

    A `limit` says what it expects only when it is the one refusing a value, not to describe the field.
    """
    return CheckConstraint(sql, name=name, info={"expected": expected, "limit": limit})


def common_constraints(table: str) -> tuple[Any, ...]:
    """The CHECK constraints every kind's table carries; each kind adds them to its __table_args__."""
    return (
        check(f"name ~ '{NAME_PATTERN}'", "name_format", "lower-case letters, digits, '-', '_' or '.'"),
        check(
            f"interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND {MAX_INTERVAL_SECONDS}",
            "interval_seconds_range",
            f"whole seconds from 1 to {MAX_INTERVAL_SECONDS} (a week)",
        ),
        check("deletion_policy IN ('delete', 'orphan')", "deletion_policy_known", "'delete' or 'orphan'"),
        check("jsonb_typeof(labels) = 'object'", "labels_object", "an object of labels"),
        *json_limits("labels", "an object of labels"),
        check(
            f"cardinality(depends_on) <= {MAX_DEPENDENCIES}",
            "depends_on_size",
            f"at most {MAX_DEPENDENCIES} references Kind/name",
        ),
    )


class Resource(SQLModel):
    """What every kind's table has besides its own desired columns.

    `uid`, `generation` and `updated_at` belong to the database: a trigger assigns the uid at INSERT (whatever
    was given) and refuses to change it, and sets the others whenever a desired column changes, by raw SQL or
    the ORM, so the ORM only reads them back.
    """

    kind: ClassVar[str]
    """The kind's name as users say it (`File`); set by each table class."""
    templated: ClassVar[tuple[str, ...]] = ()
    """The fields whose strings may reference other resources' outputs (`{{ File/app-conf.outputs.sha256 }}`),
    resolved at each reconcile (worker/references.py); the kind's migration passes the same names to
    `triggers.attach` (models/links.py) so that each reference is a dependency too."""
    secret_fields: ClassVar[tuple[str, ...]] = ()
    """The fields that hold a secret's name (a server's URL, a password): the kind's migration passes them to
    `triggers.attach` too, so a changed value makes the resource due at once (models/secret.py)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=253, unique=True, nullable=False, schema_extra={"pattern": NAME_PATTERN})
    uid: uuid.UUID | None = Field(
        default=None,
        nullable=False,
        sa_type=Uuid,  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("gen_random_uuid()"), "server_onupdate": FetchedValue()},
        description="This resource's identity for its whole life and no longer: a name used again is a new uid.",
    )
    generation: int = Field(
        default=1,
        sa_column_kwargs={"server_default": text("1"), "server_onupdate": FetchedValue()},
    )
    interval_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_INTERVAL_SECONDS,
        description="This resource's reconcile period in whole seconds, at most a week; NULL means its kind's default.",
    )
    paused: bool = Field(
        default=False,
        description="Observe and report drift, but take no action.",
        sa_column_kwargs={"server_default": text("false")},
    )
    deletion_policy: str = Field(
        default="delete",
        max_length=16,
        schema_extra={"pattern": "^(delete|orphan)$"},
        description="On DELETE, tear the real thing down ('delete') or leave it ('orphan').",
        sa_column_kwargs={"server_default": text("'delete'")},
    )
    depends_on: list[str] = Field(
        default_factory=list,
        sa_type=ARRAY(Text),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'{}'::text[]")},
        description="Resources (Kind/name) that must be ready before this one acts; stored as `File/app-conf`.",
    )
    owned_by: str | None = Field(
        default=None,
        max_length=320,
        index=True,
        description="The resource (Kind/name) that manages this one: deleting it deletes this too.",
    )
    # JSON columns track edits of their top-level keys only: reassign a nested value to change it.
    labels: dict[str, Any] = Field(
        default_factory=dict,
        sa_type=MutableDict.as_mutable(JSONB),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'{}'::jsonb")},
    )
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
        sa_column_kwargs={"server_default": text("now()"), "server_onupdate": FetchedValue()},
    )

    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}
