"""Run history: one row per reconcile attempt, pruned by the scheduler's retention rule, each for one resource's uid."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

from sqlalchemy import BigInteger, CheckConstraint, Index, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import DateTime, Field, SQLModel

OUTCOMES = ("noop", "changed", "failed", "invalid", "paused", "waiting", "deleted")
"""`waiting`: observed and reported, not acted on, until its dependencies are ready (or its dependents gone)."""


class Run(SQLModel, table=True):
    __tablename__: ClassVar[str] = "runs"  # type: ignore[misc]
    __table_args__ = (
        CheckConstraint("outcome IN ('" + "', '".join(OUTCOMES) + "')", name="outcome_known"),
        Index("ix_runs_resource", "kind", "name", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)  # type: ignore[call-overload]
    kind: str = Field(max_length=63)
    name: str = Field(max_length=253)
    uid: uuid.UUID | None = Field(default=None, sa_type=Uuid)  # type: ignore[call-overload]
    """The uid of the resource the run was for (from the status row the worker read); NULL for runs recorded before
    migration 0008 that could not be told apart from an earlier resource of the same name."""
    generation: int | None = None
    started_at: datetime = Field(sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    finished_at: datetime = Field(sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    duration_ms: float
    outcome: str = Field(max_length=16)
    actions: list[str] = Field(
        default_factory=list,
        sa_type=JSONB,  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'[]'::jsonb")},
    )
    error: str | None = None
    worker: str | None = Field(default=None, max_length=255)
    task_id: str | None = Field(default=None, max_length=155)
    attempt: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})
    """Celery's retry count for this message: 0 for the first attempt."""
