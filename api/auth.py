"""The API's one lock: with SETPOINT_API_TOKEN set, every request but the health check needs that bearer token.

A middleware rather than a route dependency, so that nothing answers without the token: not the OpenAPI
schema, not the docs, not even a 404 that would tell which paths exist.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz"})
"""Load balancers and orchestrators probe health without credentials."""
CONSOLE = "/console"
"""The web console checks its own session on every page (api/console.py): it shows its sign-in page to anyone."""
COOKIE_PATHS = frozenset({"/v1/events"})
"""Read (GET) with the console's session cookie as well as the token: a browser's EventSource cannot send a header."""


class BearerToken:
    def __init__(self, app: ASGIApp, token: str, session: Callable[[HTTPConnection], object] | None = None) -> None:
        self.app = app
        self.token = token.encode()
        self.session = session
        """The console's session of a request (None if it has no valid one)."""

    def _console(self, scope: Scope) -> bool:
        path = scope["path"]
        if path == CONSOLE or path.startswith(CONSOLE + "/"):
            return True
        return (
            path in COOKIE_PATHS
            and scope["method"] == "GET"
            and self.session is not None
            and b"authorization" not in dict(scope["headers"])
            and self.session(HTTPConnection(scope)) is not None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._console(scope):
            refusal = self.refusal(dict(scope["headers"]).get(b"authorization"))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, header: bytes | None) -> JSONResponse | None:
        """The 401 for this Authorization header, or None if it carries the token."""
        if header is None:
            return refuse("a bearer token is required: send 'Authorization: Bearer <token>'", "Bearer")
        scheme, _, token = header.partition(b" ")
        # compare_digest takes as long whatever the bytes, so timing tells an attacker nothing of the token.
        if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.token):
            return refuse("the bearer token is not valid", 'Bearer error="invalid_token"')
        return None


def refuse(detail: str, challenge: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": challenge})
