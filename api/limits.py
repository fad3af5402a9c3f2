"""The API's limit on request bodies: one larger than `api_max_body_bytes` is answered 413 and never parsed.

A middleware, so that it holds before anything reads the body: a declared Content-Length over the limit is
refused at once, and a body sent without one (chunked) is counted as it arrives and cut off at the limit.
(Starlette's own limit answers in plain text; every refusal here is a Problem, `{"detail": ...}`.)
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class TooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit: FastAPI answers it as any HTTPException, in JSON."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes (SETPOINT_API_MAX_BODY_BYTES)")


class BodySize:
    """ASGI middleware answering 413 to any HTTP request whose body is, or grows, larger than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except TooLarge:
            if started:
                raise
            await self.refuse(scope, receive, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": TooLarge(self.max_bytes).detail}, status_code=413)(scope, receive, send)
