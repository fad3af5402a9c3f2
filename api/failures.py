"""How Setpoint's errors, and the database's, become HTTP answers: the client's mistakes are 4xx, never 5xx."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException

from resources import documents, kinds
from setpoint.errors import AlreadyExists, InvalidDocument, NotFound, PreconditionFailed, UnknownKind

log = logging.getLogger("setpoint.api")


def invalid(loc: list[str | int], message: str) -> JSONResponse:
    """A 422 shaped as FastAPI's own, so clients read every validation error the same way."""
    return JSONResponse({"detail": [{"loc": loc, "msg": message, "type": "value_error"}]}, status_code=422)


def location(field: str | None) -> list[str | int]:
    """Where in the request `field` ("spec.path", "name") was: the name and spec are in the body."""
    return ["body", *field.split(".")] if field else ["body"]


async def invalid_document(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, InvalidDocument)
    return invalid(location(error.field), str(error))


async def invalid_request(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422, with what the database's constraint on a spec field expects said in words."""
    assert isinstance(error, RequestValidationError)
    details = []
    plural = request.url.path.split("/")[2] if request.url.path.startswith("/v1/") else ""
    for item in error.errors():
        item = {k: v for k, v in item.items() if k in ("loc", "msg", "type")}
        loc = list(item.get("loc", ()))
        if plural and loc[:2] == ["body", "spec"] and len(loc) == 3:
            try:
                expected = documents.expected(kinds.resolve(plural), str(loc[2]))
            except UnknownKind:
                expected = None
            if expected:
                item["msg"] = f"expected {expected} ({item['msg']})"
        details.append(item)
    return JSONResponse({"detail": jsonable_encoder(details)}, status_code=422)


async def not_found(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=404)


async def already_exists(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=409)


async def precondition_failed(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=412)


async def refused_by_database(request: Request, error: Exception) -> JSONResponse:
    """PostgreSQL refused a value the models let through (a NUL byte, a number out of range)."""
    assert isinstance(error, DataError)
    detail = getattr(getattr(error.orig, "diag", None), "message_primary", None) or str(error.orig).splitlines()[0]
    return invalid(["body"], f"the database refused a value: {detail}")


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """The database cannot be reached: the client may retry; the details go to the log, not to the client."""
    log.warning("database unavailable", extra={"path": request.url.path, "error": str(error).splitlines()[0]})
    return JSONResponse({"detail": "the database is unavailable; try again shortly"}, status_code=503)


async def method_not_allowed(request: Request, error: Exception) -> JSONResponse:
    """Starlette's 405 lists only the methods of the first route on the path; HTTP wants all of them in `Allow`."""
    assert isinstance(error, HTTPException)
    headers = dict(error.headers or {})
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), request.url.path):
            headers["Allow"] = ", ".join(sorted(method.upper() for method in operations))
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(InvalidDocument, invalid_document)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(AlreadyExists, already_exists)
    app.add_exception_handler(PreconditionFailed, precondition_failed)
    app.add_exception_handler(DataError, refused_by_database)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(405, method_not_allowed)
