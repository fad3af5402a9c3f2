"""Webhooks: where events are POSTed, and the deliveries that make each one arrive once.

Admins add a webhook with SQL (README, "Webhooks"); the active scheduler's dispatcher (scheduler/webhooks.py)
POSTs every matching event published after the webhook was made, in event order, one at a time per webhook.
`last_event_id` is its cursor: every event up to it is done with (delivered, given up on, or not matching).
A `deliveries` row is written before each attempt and marked delivered in the transaction that moves the cursor
past it, so an event acknowledged once is never sent again, and one that was not is sent again after a restart.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Text, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import DateTime, Field, SQLModel

from models.base import NAME_PATTERN, check

MAX_URL_CHARS = 2048
MAX_FILTERS = 64
MAX_ERROR_CHARS = 500
"""How much of a failed attempt's error a delivery keeps."""
PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
URL_PATTERN = (
    r"^https?://(\[[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f.]{0,15}){2,7}(%[A-Za-z0-9._~-]+)?\]|[^][/?#@:\s]+)"
    rf"(:{PORT})?([/?#]\S*)?$"
)
"""http or https; a host name, IPv4 or bracketed IPv6 address; a port 1 to 65535 if any; no user or password
(a secret belongs in `secret`), no white space."""
EVENT_TYPES = (
    "Ready",
    "NotReady",
    "DriftCorrected",
    "Drifted",
    "Failed",
    "Invalid",
    "Recovered",
    "Waiting",
    "NodeLost",
    "Deleted",
)
"""Every event type (resources/events.py TYPES says what each means; a test keeps the two the same)."""
FORMATS = ("generic", "chat")
"""The body's shape (scheduler/webhook_body.py): every field, or Slack's and Mattermost's {"text": ...} alone."""
STATES = ("pending", "delivered", "failed")


def _filter(what: str) -> list[str] | None:
    return Field(default=None, sa_type=ARRAY(Text), description=what)  # type: ignore[call-overload, no-any-return]


def _time(*, nullable: bool = True, server_now: bool = False) -> datetime | None:
    kwargs = {"server_default": text("now()")} if server_now else {}
    return Field(  # type: ignore[call-overload, no-any-return]
        default=None, nullable=nullable, sa_type=DateTime(timezone=True), sa_column_kwargs=kwargs
    )


class Webhook(SQLModel, table=True):
    __tablename__: ClassVar[str] = "webhooks"  # type: ignore[misc]
    __table_args__ = (
        check(f"name ~ '{NAME_PATTERN}'", "name_format", "lower-case letters, digits, '-', '_' or '.'"),
        check(f"url ~ '{URL_PATTERN}'", "url_format", "an http:// or https:// URL without user or password"),
        check(f"secret ~ '{NAME_PATTERN}'", "secret_format", "the name of a Secret"),
        check(
            f"kinds IS NULL OR cardinality(kinds) BETWEEN 1 AND {MAX_FILTERS}",
            "kinds_size",
            f"NULL (every kind) or 1 to {MAX_FILTERS} kinds",
        ),
        check(
            f"types IS NULL OR cardinality(types) BETWEEN 1 AND {MAX_FILTERS}",
            "types_size",
            f"NULL (every type) or 1 to {MAX_FILTERS} event types",
        ),
        check(
            "types IS NULL OR types <@ ARRAY[{}]::text[]".format(", ".join(f"'{t}'" for t in EVENT_TYPES)),
            "types_known",
            "event types among " + ", ".join(EVENT_TYPES),
        ),
        check(
            "format IN ({})".format(", ".join(f"'{f}'" for f in FORMATS)),
            "format_known",
            " or ".join(FORMATS),
        ),
    )

    name: str = Field(primary_key=True, max_length=253)
    url: str = Field(max_length=MAX_URL_CHARS)
    secret: str = Field(max_length=253)
    """The name of the Secret whose value signs the bodies; the dispatcher reads it at each send."""
    kinds: list[str] | None = _filter("Only events of these kinds (NULL: all).")
    """Spelled as the CLI takes them (File, file, files); stored as the kind's name (a trigger)."""
    types: list[str] | None = _filter("Only events of these types, Ready, DriftCorrected... (NULL: all).")
    format: str = Field(default="generic", max_length=16, sa_column_kwargs={"server_default": text("'generic'")})
    """The body's shape: generic (every field, and `text`) or chat ({"text": ...} alone, for Slack, Mattermost)."""
    paused: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    """Paused, it keeps its cursor: unpaused, it gets every event it missed, in order."""
    created_at: datetime | None = _time(nullable=False, server_now=True)
    last_event_id: int = Field(
        default=0,
        sa_type=BigInteger,
        sa_column_kwargs={"server_default": text("0")},  # type: ignore[call-overload]
    )
    """Set at INSERT to the newest event (no history is replayed), then moved by the dispatcher alone."""


class Delivery(SQLModel, table=True):
    __tablename__: ClassVar[str] = "deliveries"  # type: ignore[misc]
    __table_args__ = (
        check("state IN ('pending', 'delivered', 'failed')", "state_known", "pending, delivered or failed"),
        Index("ix_deliveries_last_attempt_at", "last_attempt_at"),
    )

    webhook: str = Field(
        sa_column=Column(Text, ForeignKey("webhooks.name", ondelete="CASCADE", onupdate="CASCADE"), primary_key=True)
    )
    event_id: int = Field(primary_key=True, sa_type=BigInteger)  # type: ignore[call-overload]
    state: str = Field(default="pending", max_length=16)
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})
    """POSTs made (recorded before each is sent); waiting for a missing secret makes none."""
    first_attempt_at: datetime | None = _time()
    last_attempt_at: datetime | None = _time()
    next_attempt_at: datetime | None = _time()
    """When a pending delivery is tried again (NULL: at once)."""
    last_status: int | None = None
    """The HTTP status of the last answer (NULL: none came)."""
    last_error: str | None = Field(default=None, max_length=MAX_ERROR_CHARS)
    delivered_at: datetime | None = _time()
