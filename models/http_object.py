"""The built-in HTTPObject kind: a JSON object kept at a URL of any REST API (controllers/http_object.py), and
where the objects an API created by POST were put, so that a worker restarted, or another one, finds them again."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict
from sqlmodel import DateTime, Field, SQLModel

from models.base import NAME_PATTERN, Resource, check, common_constraints, json_limits

URL_PATTERN = r"^(https?://|\{\{)"
"""An http(s) URL, or one that starts with a reference (`{{ HTTPObject/team.outputs.url }}/members`): the
controller checks the resolved URL again (scheme and host) before any request."""
MAX_TIMEOUT_SECONDS = 30
"""A reconcile may make three requests (GET, PUT, GET again): together well within the soft time limit (120 s)."""


class HTTPObject(Resource, table=True):
    __tablename__: ClassVar[str] = "http_objects"  # type: ignore[misc]
    __table_args__ = (
        *common_constraints("http_objects"),
        check("url IS NOT NULL OR create_url IS NOT NULL", "url_present", "a url, or a create_url to POST to"),
        check(f"url IS NULL OR url ~* '{URL_PATTERN}'", "url_http", "an http:// or https:// URL"),
        check(f"create_url IS NULL OR create_url ~* '{URL_PATTERN}'", "create_url_http", "an http:// or https:// URL"),
        check("jsonb_typeof(body) = 'object'", "body_object", "a JSON object"),
        *json_limits("body", "a JSON object"),
        check(f"headers IS NULL OR headers ~ '{NAME_PATTERN}'", "headers_name", "the name of a secret"),
        check(
            f"timeout_seconds BETWEEN 1 AND {MAX_TIMEOUT_SECONDS}",
            "timeout_seconds_range",
            f"whole seconds from 1 to {MAX_TIMEOUT_SECONDS}",
        ),
    )
    kind: ClassVar[str] = "HTTPObject"
    templated: ClassVar[tuple[str, ...]] = ("url", "create_url", "body")
    secret_fields: ClassVar[tuple[str, ...]] = ("headers",)

    url: str | None = Field(
        default=None,
        max_length=2048,
        schema_extra={"pattern": URL_PATTERN},
        description="The object's URL: GET observes it, PUT creates or replaces it, DELETE removes it. NULL with a "
        "create_url: the URL the API gives the object it creates.",
    )
    create_url: str | None = Field(
        default=None,
        max_length=2048,
        schema_extra={"pattern": URL_PATTERN},
        description="For APIs that create with POST: the collection to POST the body to; the object's location "
        "(the answer's Location header, else create_url/<id of the answer's body>) is kept in http_object_locations.",
    )
    body: dict[str, Any] = Field(
        default_factory=dict,
        sa_type=MutableDict.as_mutable(JSONB),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("'{}'::jsonb")},
        description="The JSON object wanted: in sync when each of its fields equals the remote one (nested objects "
        "alike); fields only the remote object has are ignored.",
    )
    headers: str | None = Field(
        default=None,
        max_length=253,
        schema_extra={"pattern": NAME_PATTERN},
        description='The name of a secret holding a JSON object of request headers ({"Authorization": "Bearer '
        '…"}); its values never appear in status, history or logs.',
    )
    timeout_seconds: int = Field(
        default=10,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="How long one request may take, in whole seconds.",
        sa_column_kwargs={"server_default": text("10")},
    )
    verify_tls: bool = Field(
        default=True,
        description="Verify the server's TLS certificate (https); false only for a server you trust otherwise.",
        sa_column_kwargs={"server_default": text("true")},
    )


class HTTPObjectLocation(SQLModel, table=True):
    """Where an API put an object it created by POST, by the HTTPObject's uid (a name used again is a new object).

    Written by the worker right after the POST answers, in its own statement, so a worker killed before it records
    status still leaves the location behind; removed once the object is deleted, or with its row when that row
    orphans it (migration 0015's trigger)."""

    __tablename__: ClassVar[str] = "http_object_locations"  # type: ignore[misc]

    uid: uuid.UUID = Field(primary_key=True, sa_type=Uuid)  # type: ignore[call-overload]
    url: str = Field(sa_type=Text)  # type: ignore[call-overload]
    created_at: datetime | None = Field(
        default=None,
        nullable=False,
        sa_type=DateTime(timezone=True),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("now()")},
    )
