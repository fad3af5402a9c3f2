"""The worker nodes: each worker's main process heartbeats its node's row, so a silent node can be told apart."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import CheckConstraint
from sqlmodel import DateTime, Field, SQLModel

from models.base import check

NODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$"
"""What a node's name may be (a host name or SETPOINT_NODE): it names a Redis queue and is typed in a shell."""
NODE_EXPECTED = "letters, digits, '-', '_' or '.', starting with a letter or digit, at most 253"


def node_check(column: str) -> CheckConstraint:
    """The CHECK every column naming a node carries (named `<column>_format`)."""
    return check(f"{column} IS NULL OR {column} ~ '{NODE_PATTERN}'", f"{column}_format", NODE_EXPECTED)


class Node(SQLModel, table=True):
    __tablename__: ClassVar[str] = "nodes"  # type: ignore[misc]
    __table_args__ = (check(f"name ~ '{NODE_PATTERN}'", "name_format", NODE_EXPECTED),)

    name: str = Field(primary_key=True, max_length=253)
    started_at: datetime = Field(sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    """When the worker heartbeating this node last started."""
    last_seen_at: datetime = Field(sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    """The database's time of the last heartbeat: a node silent for SETPOINT_NODE_SILENT_SECONDS is lost."""
    worker: str | None = Field(default=None, max_length=255)
    """The Celery node name of the worker that heartbeats (`name@host`)."""
    version: str | None = Field(default=None, max_length=64)
    """The Setpoint version that worker runs."""
