"""The console's sessions: a signed cookie (never the token), its CSRF token, and the same-origin check on writes.

With SETPOINT_API_TOKEN set, a session is given once the token is typed in; its cookie holds a random nonce, the
name the user gave and an expiry, signed with a key derived from the token (so changing the token ends every
session, and nothing in the cookie reveals it). Without a token, every visitor gets an anonymous session, signed
with a key made at start, which only carries the CSRF token for the actions `--console-actions` allows. Signing
out ends the session itself: its nonce is remembered (bounded, per process) until the session would have expired.
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
MAX_SIGNED_OUT = 10_000
"""Signed-out sessions remembered (until they would have expired) by this process; past that many, the signing key
is renewed, which signs everyone out: memory stays bounded and a signed-out cookie never opens the console again."""


@dataclasses.dataclass(frozen=True)
class Session:
    nonce: str
    identity: str
    """Who holds the session as the history records it: `token/alice` with the token (the name is what the user
    typed, not verified: whoever has the token may type any), `token` if they typed none, `anonymous` without a
    token."""
    expires: int


def identity(said: str) -> str:
    """A name as the history records it, `token/<name>`: letters, digits, `@._-`, at most 64; `token` if nothing is
    left. The prefix says that only the token was checked, the name is what the user typed."""
    name = IDENTITY.sub("", said)[:MAX_IDENTITY]
    return f"token/{name}" if name else "token"


def _ascii(value: str) -> bytes | None:
    """A cookie or form value as bytes, or None if it is not ASCII (never ours: compare_digest refuses such str)."""
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        return None


class Sessions:
    """Issues and checks session cookies and CSRF tokens, signed with one key."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.epoch = 0
        self.key = self._key()
        self.signed_out: dict[str, int] = {}
        """The nonces of sessions signed out here, with their expiry."""

    def _key(self) -> bytes:
        if not self.token:
            return secrets.token_bytes(32)
        salt = b"setpoint console session" + (f" {self.epoch}".encode() if self.epoch else b"")
        return hmac.new(self.token.encode(), salt, hashlib.sha256).digest()

    def sign_out(self, session: Session, *, now: float | None = None) -> None:
        """End `session` for good: its cookie (and every copy of it) opens nothing any more."""
        if len(self.signed_out) >= MAX_SIGNED_OUT:  # forget the expired ones (their cookies open nothing anyway)
            moment = now or time.time()
            self.signed_out = {nonce: expires for nonce, expires in self.signed_out.items() if expires > moment}
        if len(self.signed_out) >= MAX_SIGNED_OUT:
            self.epoch += 1
            self.key, self.signed_out = self._key(), {}
            return
        self.signed_out[session.nonce] = session.expires

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
        said, signed = _ascii(signature), _ascii(payload)
        if said is None or signed is None or not hmac.compare_digest(self._sign(signed).encode(), said):
            return None
        try:
            session = Session(**json.loads(base64.urlsafe_b64decode(payload.encode())))
        except (ValueError, TypeError):
            return None
        if session.expires <= (now or time.time()) or session.nonce in self.signed_out:
            return None
        return session

    def of(self, connection: HTTPConnection) -> Session | None:
        return self.read(connection.cookies.get(COOKIE))

    def csrf(self, session: Session) -> str:
        """The token every state-changing form of this session carries."""
        return self._sign(f"csrf:{session.nonce}".encode())

    def csrf_ok(self, session: Session, said: str | None) -> bool:
        given = _ascii(said or "")
        return bool(given) and given is not None and hmac.compare_digest(self.csrf(session).encode(), given)


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
