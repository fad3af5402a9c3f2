"""The dependency graph: one row per edge, `kind/name` needs `on_kind/on_name`.

Kept by the desired tables' triggers (models/links.py) from each row's `depends_on` and the references in its
templated fields, so admins read it with SQL ("what depends on File/app-conf?") and the scheduler's wake-ups
follow it. An edge lasts as long as its resource's status row: a resource being deleted is still a dependent,
so what it depends on is torn down after it (deletion runs leaves first).
"""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import Index
from sqlmodel import Field, SQLModel


class Dependency(SQLModel, table=True):
    __tablename__: ClassVar[str] = "dependencies"  # type: ignore[misc]
    __table_args__ = (Index("ix_dependencies_on", "on_kind", "on_name"),)

    kind: str = Field(primary_key=True, max_length=63)
    name: str = Field(primary_key=True, max_length=253)
    on_kind: str = Field(primary_key=True, max_length=63)
    on_name: str = Field(primary_key=True, max_length=253)
