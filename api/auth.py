"""The API's one lock: with SETPOINT_API_TOKEN set, every request but the health check needs that bearer token.

A middleware rather than a route dependency, so that nothing answers without the token: not the OpenAPI
schema, not the docs, not even a 404 that would tell which paths exist.
"""

from __future__ import annotations

import secrets

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz"})
"""Load balancers and orchestrators probe health without credentials."""


class BearerToken:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
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
