"""`/v1/secrets`: set, list, read and delete secrets over HTTP; no answer ever holds a value.

Behind the same bearer token as every other route (api/auth.py). A value is written with PUT and never read
back: the API's database role cannot select it (migration 0012), and these answers show that it is set, its
digest, its times and the resources that refer to it.
"""

# No `from __future__ import annotations`: FastAPI reads the run-time models from the endpoints' annotations.

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from api.bodies import PREFIX_PATTERN, Problem
from api.routes import MAX_OFFSET, UNREADABLE, Responses
from models.base import NAME_PATTERN
from models.secret import MAX_SECRET_BYTES
from resources import secrets

SECRET_NAME_RULES = (
    "Lower-case letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most 253 "
    "characters: what resources name it by (`{{ Secret/NAME }}`, a `server` or `password` column)."
)
Name = Annotated[str, Path(pattern=NAME_PATTERN, max_length=253, description=SECRET_NAME_RULES)]


class SecretValue(BaseModel):
    """The value to store; it is never returned."""

    model_config = ConfigDict(extra="forbid")

    value: str = Field(
        min_length=1,
        max_length=MAX_SECRET_BYTES,
        description="The secret's value (a URL, a password, a token): text of 1 byte to 64 KiB in UTF-8, no NUL.",
    )


class SecretDocument(BaseModel):
    """What may be known of a secret without its value."""

    name: str
    digest: str = Field(description="`sha256:` and the first 12 hex digits of the value's SHA-256: tells values apart.")
    set: Literal[True] = Field(description="Always true: a secret that exists has a value.")
    created_at: datetime
    updated_at: datetime = Field(description="When the value last changed (a PUT of the same value leaves it).")
    used_by: list[str] = Field(description="The resources that refer to it (`Workload/api`), due at each change.")


class SecretPage(BaseModel):
    items: list[SecretDocument]
    next_offset: int | None = Field(description="The offset of the next page; null on the last one.")


def router(engine: Engine) -> APIRouter:
    missing: Responses = {404: {"model": Problem, "description": "No secret has that name."}}
    api = APIRouter(prefix="/v1/secrets", tags=["secrets"])

    @api.get("", response_model=SecretPage, operation_id="listSecrets", summary="List secrets (never their values)")
    def list_(
        prefix: Annotated[
            str | None, Query(pattern=PREFIX_PATTERN, max_length=253, description="Only names starting so.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, by name.")] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many first.")] = 0,
    ) -> dict[str, Any]:
        found = secrets.listing(engine, prefix=prefix, limit=limit + 1, offset=offset)
        more = len(found) > limit
        return {"items": [s.as_json() for s in found[:limit]], "next_offset": offset + limit if more else None}

    @api.get(
        "/{name}",
        response_model=SecretDocument,
        operation_id="getSecret",
        summary="Read a secret's digest and times (never its value)",
        responses=missing,
    )
    def get(name: Name) -> dict[str, Any]:
        return secrets.get(engine, name).as_json()

    @api.put(
        "/{name}",
        response_model=SecretDocument,
        operation_id="setSecret",
        summary="Create a secret or change its value",
        responses={
            **UNREADABLE,
            201: {"model": SecretDocument, "description": "Created."},
        },
    )
    def put(name: Name, body: SecretValue, response: Response) -> dict[str, Any]:
        """200 when it existed (its value changed or not), 201 when created. Every resource that refers to it is
        reconciled at once with the new value."""
        done = secrets.put(engine, name, body.value)
        if done.change == "created":
            response.status_code = status.HTTP_201_CREATED
            response.headers["Location"] = f"{api.prefix}/{name}"
        return done.secret.as_json()

    @api.delete(
        "/{name}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        operation_id="deleteSecret",
        summary="Delete a secret",
        responses=missing,
    )
    def delete(name: Name) -> None:
        """The resources that refer to it wait (`DependencyMissing`) until it is set again."""
        secrets.delete(engine, name)

    return api
