"""One kind's routes, `/v1/{plural}` and `/v1/{plural}/{name}`, over the same rows an admin edits in SQL."""

# No `from __future__ import annotations`: FastAPI reads the run-time models from the endpoints' annotations.

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Path, Query, Response, status
from pydantic import BaseModel
from sqlalchemy import Engine

from api import bodies, preconditions
from api.bodies import NAME_RULES, PREFIX_PATTERN, Phase, Problem
from models.base import NAME_PATTERN
from resources import documents
from resources.kinds import Kind

MAX_OFFSET = 2**63 - 1
"""PostgreSQL's OFFSET is a bigint."""

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

Responses = dict[int | str, dict[str, Any]]
UNREADABLE: Responses = {
    400: {"model": Problem, "description": "The body is not JSON."},
    413: {"model": Problem, "description": "The body is larger than SETPOINT_API_MAX_BODY_BYTES (1 MiB)."},
}

Name = Annotated[str, Path(pattern=NAME_PATTERN, max_length=253, description=NAME_RULES)]
IfMatch = Annotated[
    str | None,
    Header(
        description='Write only if the resource is still at this generation, as its ETag gave it (`"3"`); '
        "else 412 and nothing is written."
    ),
]
TAGGED: Responses = {
    200: {"headers": {"ETag": {"description": "The generation, quoted.", "schema": {"type": "string"}}}}
}
CHANGED: Responses = {
    412: {"model": Problem, "description": "If-Match named a generation the resource is no longer at."}
}


def typed(**models: type[BaseModel]) -> Callable[[Endpoint], Endpoint]:
    """Annotate an endpoint's parameters with a kind's own models, which exist only at run time.

    Each is a subclass of the model the endpoint declares (so type checkers follow the code); FastAPI reads
    the annotations to validate requests and to write each kind's typed spec into the OpenAPI schema.
    """

    def annotate(endpoint: Endpoint) -> Endpoint:
        endpoint.__annotations__.update(models)
        return endpoint

    return annotate


def router(kind: Kind, engine: Engine) -> APIRouter:
    """The routes of `kind`, their bodies typed by models generated from its spec."""
    shapes = bodies.bodies(kind)
    missing: Responses = {404: {"model": Problem, "description": f"No {kind.name} has that name."}}
    api = APIRouter(prefix=f"/v1/{kind.plural}", tags=[kind.plural])

    @api.get("", response_model=shapes.page, operation_id=f"list{kind.name}s", summary=f"List {kind.plural}")
    def list_(
        phase: Annotated[Phase | None, Query(description="Only resources in this phase.")] = None,
        ready: Annotated[bool | None, Query(description="Only ready (or only not ready) resources.")] = None,
        prefix: Annotated[
            str | None, Query(pattern=PREFIX_PATTERN, max_length=253, description="Only names starting so.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, by name.")] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many first.")] = 0,
    ) -> dict[str, Any]:
        # One more than asked for tells whether there is a next page.
        found = documents.listing(engine, kind, limit=limit + 1, offset=offset, phase=phase, ready=ready, prefix=prefix)
        more = len(found) > limit
        return {"items": found[:limit], "next_offset": offset + limit if more else None}

    @api.post(
        "",
        status_code=status.HTTP_201_CREATED,
        response_model=shapes.document,
        operation_id=f"create{kind.name}",
        summary=f"Create a {kind.name}",
        responses={**UNREADABLE, 409: {"model": Problem, "description": f"A {kind.name} already has that name."}},
    )
    @typed(body=shapes.create)
    def create(body: bodies.Create, response: Response) -> dict[str, Any]:
        """The new resource is reconciled by a worker shortly after; watch `status.ready`."""
        created = documents.create(engine, kind, body.name, body.spec.model_dump())
        response.headers["Location"] = f"{api.prefix}/{body.name}"
        return preconditions.tag(response, created)

    @api.get(
        "/{name}",
        response_model=shapes.document,
        operation_id=f"get{kind.name}",
        summary=f"Read a {kind.name}",
        responses={**TAGGED, **missing},
    )
    def get(name: Name, response: Response) -> dict[str, Any]:
        return preconditions.tag(response, documents.get(engine, kind, name))

    @api.put(
        "/{name}",
        response_model=shapes.document,
        operation_id=f"replace{kind.name}",
        summary=f"Replace a {kind.name}'s spec",
        responses={**TAGGED, **UNREADABLE, **missing, **CHANGED},
    )
    @typed(body=shapes.replace)
    def replace(name: Name, body: bodies.Replace, response: Response, if_match: IfMatch = None) -> dict[str, Any]:
        """Fields left out take their defaults. An unchanged spec leaves `generation` alone."""
        replaced = documents.replace(
            engine, kind, name, body.spec.model_dump(), if_generation=preconditions.generations(if_match)
        )
        return preconditions.tag(response, replaced)

    @api.patch(
        "/{name}",
        response_model=shapes.document,
        operation_id=f"patch{kind.name}",
        summary=f"Change some of a {kind.name}'s spec",
        responses={**TAGGED, **UNREADABLE, **missing, **CHANGED},
    )
    @typed(body=shapes.patch)
    def patch(name: Name, body: bodies.Patch, response: Response, if_match: IfMatch = None) -> dict[str, Any]:
        """The fields given replace the current ones (a whole object such as `labels` at once); the rest are kept.
        Concurrent patches of different fields all land: each merges into the row as the last one left it."""
        patched = documents.replace(
            engine,
            kind,
            name,
            body.spec.model_dump(exclude_unset=True),
            partial=True,
            if_generation=preconditions.generations(if_match),
        )
        return preconditions.tag(response, patched)

    @api.delete(
        "/{name}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        operation_id=f"delete{kind.name}",
        summary=f"Delete a {kind.name}",
        responses={**missing, **CHANGED},
    )
    def delete(name: Name, if_match: IfMatch = None) -> None:
        """Deletion is asynchronous: the resource is gone from the API at once, and a worker then tears the
        real thing down (unless its `deletion_policy` is `orphan`)."""
        documents.delete(engine, kind, name, if_generation=preconditions.generations(if_match))

    return api
