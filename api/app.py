"""The REST API's application: a set of routes per registered kind, the health check, errors and the token lock."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any

from fastapi import FastAPI, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware.trustedhost import TrustedHostMiddleware

from api import auth, console, events, failures, history, limits, routes, secrets
from api.bodies import Problem
from models import change
from models.database import make_engine
from resources.kinds import all_kinds
from setpoint.errors import UsageError
from setpoint.settings import Settings

log = logging.getLogger("setpoint.api")

DESCRIPTION = """\
Desired state as documents `{kind, name, spec}`, read and written in the same PostgreSQL tables admins edit
in SQL: a change made either way shows in the other at once. Workers reconcile each resource and report
`status` (`ready`, `phase`, `observed_generation`, `conditions`, `last_error`); the API never writes it.

Writes are asynchronous in effect: a POST, PUT or PATCH answers once the desired state is stored, and a
DELETE once the row is gone; a worker then makes (or tears down) the real thing. Follow `status` to see it done.

Resources may depend on each other (`spec.depends_on`, a list of `Kind/name`) and reference each other's
outputs in templated fields (`{{ File/app-conf.outputs.sha256 }}`); a cycle is refused with 422 naming the
field. Reading or writing one resource returns, in `status`, its `outputs`, its `dependencies` and
`dependents` (each with its phase and readiness), its `owner` and the resources it owns (`owned`).

Secrets (`/v1/secrets`) hold connection URLs, passwords and tokens that resources name (`{{ Secret/NAME }}`):
PUT writes a value, and no answer ever returns one, only that it is set and its digest.

Each resource's `ETag` is its generation; send it back in `If-Match` to write (PUT, PATCH, DELETE) only if
nobody changed the spec since you read it (else 412). Concurrent PATCHes of different fields all land.

Limits: a request body of at most 1 MiB (else 413; SETPOINT_API_MAX_BODY_BYTES); `labels` (and a workload's
`env`) nested at most 16 levels deep and at most 64 KiB; `interval_seconds` a whole number from 1 to 604800
(a week); text valid Unicode without NUL. The database enforces the same, so SQL cannot store what the API
could not serve back.
"""

NO_TOKEN = (
    "the REST API needs a token: set SETPOINT_API_TOKEN to a long random secret (for example the output of "
    "`openssl rand -hex 32`); clients then send 'Authorization: Bearer <token>'. To serve without one on this "
    "machine only, pass --insecure-no-auth with a loopback --host (127.0.0.1, ::1 or localhost)"
)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Without a token, the only Host names served (with any port): this machine's own."""


def create_app(settings: Settings, *, insecure_no_auth: bool = False, console_actions: bool = False) -> FastAPI:
    """The API over the database at `settings.database_url`, with one engine of its own, disposed at shutdown.

    Without `settings.api_token` anyone who reaches the port may run commands on every worker's host (a
    workload's `command`), so serving without a token must be asked for: `insecure_no_auth`, else UsageError.
    The web console (/console) is then read-only, unless `console_actions` too.
    """
    if not settings.api_token and not insecure_no_auth:
        raise UsageError(NO_TOKEN)
    engine = change.track(make_engine(settings.database_url))
    event_routes, event_hub = events.router(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        event_hub.stop()
        engine.dispose()

    app = FastAPI(
        title="Setpoint",
        version=metadata.version("setpoint"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    failures.install(app)
    app.add_middleware(history.Acting, actor="api:token" if settings.api_token else "api:anonymous")
    sessions = console.mount(app, engine, token=settings.api_token, actions=console_actions and insecure_no_auth)
    locked: dict[str, Any] = {}
    if settings.api_token:
        app.add_middleware(auth.BearerToken, token=settings.api_token, session=sessions.of)
        # Enforced by the middleware above; this only tells the OpenAPI schema (and Swagger's Authorize button).
        locked = {
            "dependencies": [Security(HTTPBearer(auto_error=False))],
            "responses": {401: {"model": Problem, "description": "No bearer token, or not the right one."}},
        }
    if not settings.api_token:
        # DNS rebinding: without a token, a page of another site whose name now points at 127.0.0.1 would be served
        # as if it were ours (same origin to the browser); only a loopback name in Host is ours.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))
    # Added last, so outermost: no body larger than the limit is read, whoever sends it.
    app.add_middleware(limits.BodySize, max_bytes=settings.api_max_body_bytes)
    for kind in all_kinds().values():
        app.include_router(routes.router(kind, engine), **locked)
        app.include_router(history.router(kind, engine), **locked)
    app.include_router(secrets.router(engine), **locked)
    app.include_router(event_routes, **locked)
    app.add_api_route(
        "/healthz",
        health(engine),
        methods=["GET"],
        tags=["health"],
        summary="Whether the API can reach its database",
        responses={503: {"description": "The database cannot be reached."}},
    )
    return app


def health(engine: Engine) -> Callable[[], Any]:
    """The health check's endpoint, reaching the database through the app's own engine."""

    def healthz() -> Any:
        """200 `{"status": "ok"}` once `SELECT 1` answers; 503 otherwise. Needs no token."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as error:
            log.warning("health check failed", extra={"error": str(error).splitlines()[0]})
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    return healthz
