"""The console's sessions: a signed cookie (never the token), its CSRF token, and the same-origin check on writes.

With SETPOINT_API_TOKEN set, a session is given once the token is typed in; its cookie holds a random nonce, the
name the user gave and an expiry, signed with a key derived from the token (so changing the token ends every
session, and nothing in the cookie reveals it). Without a token, every visitor gets an anonymous session, signed
with a key made at start, which only carries the CSRF token for the actions `--console-actions` allows.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

COOKIE = "setpoint_console"
LIFETIME_S = 12 * 3600
"""A session lasts a working day; then the token is asked for again."""
IDENTITY = re.compile(r"[^A-Za-z0-9@._-]")
MAX_IDENTITY = 64


@dataclasses.dataclass(frozen=True)
class Session:
    nonce: str
    identity: str
    """Who the user said they are (`alice`), recorded as `console:alice` with their changes; `token` if they said
    nothing, `anonymous` without a token."""
    expires: int


def identity(said: str) -> str:
    """A name as the history records it: letters, digits, `@._-`, at most 64; `token` if nothing is left."""
    return IDENTITY.sub("", said)[:MAX_IDENTITY] or "token"


class Sessions:
    """Issues and checks session cookies and CSRF tokens, signed with one key."""

    def __init__(self, token: str | None) -> None:
        self.key = (
            hmac.new(token.encode(), b"setpoint console session", hashlib.sha256).digest()
            if token
            else secrets.token_bytes(32)
        )

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self.key, payload, hashlib.sha256).hexdigest()

    def issue(self, who: str, *, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(16), who, int(now or time.time()) + LIFETIME_S)
        payload = base64.urlsafe_b64encode(json.dumps(dataclasses.asdict(session)).encode())
        return session, f"{payload.decode()}.{self._sign(payload)}"

    def read(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None if it is missing, forged, tampered with or expired."""
        if not cookie or "." not in cookie:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(self._sign(payload.encode()), signature):
            return None
        try:
            session = Session(**json.loads(base64.urlsafe_b64decode(payload.encode())))
        except (ValueError, TypeError):
            return None
        return session if session.expires > (now or time.time()) else None

    def of(self, connection: HTTPConnection) -> Session | None:
        return self.read(connection.cookies.get(COOKIE))

    def csrf(self, session: Session) -> str:
        """The token every state-changing form of this session carries."""
        return self._sign(f"csrf:{session.nonce}".encode())

    def csrf_ok(self, session: Session, said: str | None) -> bool:
        return bool(said) and hmac.compare_digest(self.csrf(session), said or "")


def same_origin(connection: HTTPConnection) -> bool:
    """Whether a write comes from a page of this very site: its Origin (else Referer) is this host, as the browser
    reached it. A cross-site form post names the other site; a request naming neither is refused too."""
    said = connection.headers.get("origin") or connection.headers.get("referer")
    if not said or said == "null":
        return False
    parts = urlsplit(said)
    # Behind a proxy that ends TLS the request may look like http while the page was https: an https origin of the
    # same host is this site too (a proxy must pass the Host header through unchanged).
    scheme_ok = parts.scheme in (connection.url.scheme, "https")
    return scheme_ok and parts.netloc == connection.headers.get("host", "")


def secure(connection: HTTPConnection) -> bool:
    """Whether the browser reached us over HTTPS (behind a proxy: uvicorn's --proxy-headers says so)."""
    return connection.url.scheme == "https"
