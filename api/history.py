"""A resource's history over HTTP (`GET /v1/{plural}/{name}/history`, `POST /v1/{plural}/{name}/rollback`), and
the middleware that records every write made through the API as the caller's, with the reason it gave.
"""

# No `from __future__ import annotations`: FastAPI reads the run-time models from the endpoints' annotations.

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from api import preconditions
from api.bodies import Problem
from api.routes import CHANGED, MAX_OFFSET, UNREADABLE, IfMatch, Name, Responses
from models import change
from resources import documents, history
from resources.kinds import Kind

REASON_HEADER = b"x-setpoint-reason"
"""Why the caller writes: recorded with the change (control characters dropped, at most 1,024 characters)."""
READS = frozenset({"GET", "HEAD", "OPTIONS"})


class Acting:
    """Every transaction a writing request begins is stamped with the caller (`api:token`) and its reason."""

    def __init__(self, app: ASGIApp, actor: str) -> None:
        self.app = app
        self.actor = actor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        said = dict(scope["headers"]).get(REASON_HEADER, b"")[: change.MAX_REASON * 4]
        with change.acting(self.actor, change.clean(said.decode("utf-8", "replace"), change.MAX_REASON) or None):
            await self.app(scope, receive, send)


class Entry(BaseModel):
    id: int
    at: str
    kind: str
    name: str
    uid: str | None
    generation: int | None
    operation: str = Field(
        description="insert, update or delete; or reconcile (someone asked for a reconcile now: nothing changed)."
    )
    changed: dict[str, Any] = Field(
        description='{column: {"old": …, "new": …}} for each column that changed; a value longer than 2 KiB as '
        '{"digest": "sha256:<hex>", "bytes": n} (`desired` has it whole).'
    )
    desired: dict[str, Any] | None = Field(description="The desired row after the change (before it, for a delete).")
    db_user: str
    application_name: str | None
    client_addr: str | None
    actor: str | None = Field(description="Who the writer said it was: `cli:alice`, `api:token`, `setpoint:App/web`.")
    reason: str | None


class Page(BaseModel):
    items: list[Entry]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null on the last.")


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generation: int = Field(ge=1, le=2**31 - 1, description="The generation whose desired columns to write back.")


class Rolled(BaseModel):
    kind: str
    name: str
    to_generation: int
    previous: int = Field(description="The generation before the rollback.")
    generation: int = Field(description="The generation written (the previous one if nothing changed).")
    changed: bool
    fields: list[str] = Field(description="The desired columns it restored.")
    kept: list[str] = Field(
        description="Columns that differ from that generation but that a rollback leaves as they are: paused, "
        "owned_by, deletion_policy."
    )


def router(kind: Kind, engine: Engine) -> APIRouter:
    """The history routes of `kind`."""
    api = APIRouter(prefix=f"/v1/{kind.plural}", tags=[kind.plural])
    missing: Responses = {404: {"model": Problem, "description": f"No {kind.name} has that name, nor had."}}

    @api.get(
        "/{name}/history",
        response_model=Page,
        operation_id=f"history{kind.name}",
        summary=f"Who changed a {kind.name}'s desired state, newest first",
        responses=missing,
    )
    def history_(
        name: Name,
        limit: Annotated[int, Query(ge=1, le=history.MAX_PAGE, description="At most this many.")] = 100,
        before: Annotated[int | None, Query(ge=1, le=MAX_OFFSET, description="Only changes older than this.")] = None,
    ) -> dict[str, Any]:
        found = history.entries(engine, kind.name, name, limit=limit + 1, before=before)
        if not found and before is None:
            documents.get(engine, kind, name)  # 404 unless it exists (with its history pruned)
        items = [entry.as_json() for entry in found[:limit]]
        return {"items": items, "next_before": found[limit - 1].id if len(found) > limit else None}

    @api.post(
        "/{name}/rollback",
        response_model=Rolled,
        operation_id=f"rollback{kind.name}",
        summary=f"Write an earlier generation's desired state into a {kind.name}, as a new generation",
        responses={**UNREADABLE, **missing, **CHANGED},
    )
    def rollback(name: Name, body: Rollback, response: Response, if_match: IfMatch = None) -> dict[str, Any]:
        """A generation not in the resource's history (never written, or pruned) is 422 naming `generation`.
        Already at that desired state: nothing is written, `changed` is false."""
        rolled = history.rollback(
            engine, kind, name, body.generation, if_generation=preconditions.generations(if_match)
        )
        response.headers["ETag"] = f'"{rolled.generation}"'
        return {**rolled.__dict__, "fields": list(rolled.fields), "kept": list(rolled.kept), "changed": rolled.changed}

    return api
