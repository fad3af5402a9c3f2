"""Events: one row per transition a person would want to know about (became ready, drift corrected, failed, ...).

Triggers on statuses write each into `event_inbox` in the transaction that made it; `setpoint_publish_events()`
moves them into `events`, numbering them in the order they committed, one publisher at a time (an advisory lock).
So `events.id` only ever grows in commit order: a reader that has seen id N has seen every event up to N, and
resumes after it (SSE's Last-Event-ID, the webhook dispatcher's cursor) without missing one that committed late.
Whoever reads calls the function first; the `setpoint_events` NOTIFY says there is something to publish.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, Index, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import DateTime, Field, SQLModel

CHANNEL = "setpoint_events"
"""NOTIFY channel: events wait in the inbox to be published (the payload is empty)."""


def _details() -> Any:
    return Field(
        default=None,
        nullable=False,
        sa_type=JSONB,  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'{}'::jsonb")},
    )


class _EventFields(SQLModel):
    at: datetime = Field(sa_type=DateTime(timezone=True), sa_column_kwargs={"server_default": text("now()")})  # type: ignore[call-overload]
    kind: str = Field(max_length=63)
    name: str = Field(max_length=253)
    uid: uuid.UUID | None = Field(default=None, sa_type=Uuid)  # type: ignore[call-overload]
    generation: int | None = None
    type: str = Field(max_length=32)
    """What happened: Ready, NotReady, DriftCorrected, Drifted, Failed, Invalid, Recovered, Waiting, NodeLost, Deleted
    (resources/events.py says what each means)."""
    reason: str | None = Field(default=None, max_length=128)
    message: str | None = Field(default=None, sa_type=Text)  # type: ignore[call-overload]
    details: dict[str, Any] | None = _details()
    """What a reader may want beyond the message. DriftCorrected and Drifted: `{"drift": [{"change": …}, …]}`, the
    actions the controller took to put it back (DriftCorrected) or would take (Drifted, when paused), as its plan
    says them (`write 8 bytes to /etc/motd`), not the field-by-field difference; at most 20 of 300 characters."""


class Event(_EventFields, table=True):
    __tablename__: ClassVar[str] = "events"  # type: ignore[misc]
    __table_args__ = (Index("ix_events_resource", "kind", "name", "id"), Index("ix_events_at", "at"))

    id: int = Field(primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False})  # type: ignore[call-overload]
    """Given at publication from the sequence events_id_seq, in commit order."""


class PendingEvent(_EventFields, table=True):
    __tablename__: ClassVar[str] = "event_inbox"  # type: ignore[misc]

    seq: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)  # type: ignore[call-overload]
