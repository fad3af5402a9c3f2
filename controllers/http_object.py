"""The HTTPObject kind's controller: a JSON object kept at a URL of any REST API.

GET observes the object (404: it does not exist); in sync means each field of the desired body equals the remote
one, nested objects compared the same way, fields only the remote object has ignored. PUT creates or replaces it
at `url`; with a `create_url`, POST creates it there and, without a `url`, the location the API answers with is
kept in the database (http_object_locations, by the resource's uid): written as soon as the POST answers, so a
worker restarted, or any other worker, finds the object again instead of creating a second one. DELETE removes
it on teardown (404 is fine: already gone).

Answers: 5xx, 408, 429, timeouts and connection errors are transient (a Retry-After is honoured: the next attempt
comes no sooner); any other 4xx or 3xx is permanent, with the answer's body, cut short, in the message. Header
values come from a secret (`headers` names it) and are scrubbed from status, history and logs like any secret
value (each value on its own too, as an error body may echo one); actions hold them as `Redacted`. Requests go
through one bounded, pooled client per worker process (per TLS setting).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2
from sqlalchemy import text

from models.http_object import HTTPObject
from worker import secrets, side_engine
from worker.controller import Action, Controller, InvalidSpec, PermanentError, TransientError
from worker.secrets import Redacted

SHOWN_CHARS = 300
"""How much of an answer's body an error message quotes."""
MAX_RETRY_AFTER_S = 3600.0
"""A Retry-After further away than this is taken as this: a broken header must not park a resource for days."""
LIMITS = httpx2.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=30)
"""Per worker process, per TLS setting: a thousand objects reconciled at once open at most eight connections."""
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""A header name, as RFC 9110 spells a token."""

# One INFO line per request, with its URL, is noise in the worker's log; failures are in status and history.
logging.getLogger("httpx2").setLevel(logging.WARNING)


class ApiUnreachable(TransientError):
    """The API could not be reached, or did not answer in time; retried with backoff."""


class ApiUnavailable(TransientError):
    """The API answered that it cannot serve now (5xx, 408, 429); retried, never before its Retry-After."""


class ApiRefused(PermanentError):
    """The API refused the request (4xx) or answered something else than expected: retrying the same request
    cannot help; fix the row (or the headers secret) and it is tried again."""


@dataclasses.dataclass(frozen=True)
class Api:
    """How to talk to the object's API: the headers' values never show (`Redacted`)."""

    headers: tuple[tuple[str, Redacted], ...] = ()
    timeout_s: float = 10.0
    verify_tls: bool = True

    def send(self, method: str, url: str, body: dict[str, Any] | None = None) -> httpx2.Response:
        headers = {name: value.value for name, value in self.headers}
        try:
            return _client(self.verify_tls).request(method, url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx2.TimeoutException as error:
            raise ApiUnreachable(
                f"{method} {url}: no answer within {self.timeout_s:g}s ({type(error).__name__})"
            ) from None
        except httpx2.TransportError as error:
            raise ApiUnreachable(f"{method} {url}: {type(error).__name__}: {error}") from None


@dataclasses.dataclass(frozen=True)
class Remote:
    """The object as the API shows it now."""

    url: str | None
    """Its URL; None while an object created by POST has not been created yet."""
    body: dict[str, Any] | None
    """Its JSON, None when it does not exist (GET answered 404)."""
    api: Api
    kept: bool = False
    """Whether a location is kept for it (created by POST)."""

    @property
    def exists(self) -> bool:
        return self.body is not None


@dataclasses.dataclass(frozen=True)
class PutObject(Action):
    """Create or replace the object at `url` with the desired body."""

    url: str
    body: dict[str, Any]
    api: Api
    fields: tuple[str, ...] = ()
    """The fields that differ (none: it does not exist)."""

    def run(self) -> None:
        response = self.api.send("PUT", self.url, self.body)
        _check("PUT", self.url, response)

    def __str__(self) -> str:
        return f"PUT {self.url}: " + (f"replace ({', '.join(self.fields)} differ)" if self.fields else "create")


@dataclasses.dataclass(frozen=True)
class PostObject(Action):
    """Create the object by POST to `create_url`. Without a `url` (the row's), keep the location the API answers
    with; with one, refuse an answer that puts it elsewhere (each later GET of `url` would create another)."""

    create_url: str
    body: dict[str, Any]
    api: Api
    uid: uuid.UUID
    url: str | None = None

    def run(self) -> None:
        response = self.api.send("POST", self.create_url, self.body)
        _check("POST", self.create_url, response)
        if self.url is None:
            keep_location(self.uid, location(self.create_url, response))
        elif response.headers.get("location"):
            put = location(self.create_url, response)
            if put != self.url:
                raise ApiRefused(
                    f"POST {self.create_url} put the object at {put}, not at url {self.url}: fix url, or remove it "
                    "to follow the location the API answers"
                )

    def __str__(self) -> str:
        return f"POST {self.create_url}: create" + (" (its location kept)" if self.url is None else "")


@dataclasses.dataclass(frozen=True)
class DeleteObject(Action):
    """Delete the object (404: already gone) and forget its location."""

    url: str
    api: Api
    uid: uuid.UUID

    def run(self) -> None:
        response = self.api.send("DELETE", self.url)
        _check("DELETE", self.url, response, missing_ok=True)
        forget_location(self.uid)

    def __str__(self) -> str:
        return f"DELETE {self.url}"


@dataclasses.dataclass(frozen=True)
class ForgetLocation(Action):
    """The object created by POST is gone already: forget where it was."""

    uid: uuid.UUID

    def run(self) -> None:
        forget_location(self.uid)

    def __str__(self) -> str:
        return "forget the deleted object's location"


def kept_location(uid: uuid.UUID) -> str | None:
    """Where the API put the object created by POST for resource `uid`, if it did."""
    with side_engine.engine().connect() as conn:
        found = conn.execute(text("SELECT url FROM http_object_locations WHERE uid = :u"), {"u": uid}).scalar()
    return None if found is None else str(found)


def keep_location(uid: uuid.UUID, url: str) -> None:
    with side_engine.engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO http_object_locations (uid, url) VALUES (:u, :url) "
                "ON CONFLICT (uid) DO UPDATE SET url = EXCLUDED.url, created_at = now()"
            ),
            {"u": uid, "url": url},
        )


def forget_location(uid: uuid.UUID) -> None:
    with side_engine.engine().begin() as conn:
        conn.execute(text("DELETE FROM http_object_locations WHERE uid = :u"), {"u": uid})


class HTTPObjectController(Controller[HTTPObject, Remote]):
    model = HTTPObject

    def validate(self, desired: HTTPObject) -> None:
        if desired.url is None and desired.create_url is None:
            raise InvalidSpec("url", "give the object's url, or a create_url to POST it to")
        for field in ("url", "create_url"):
            value = getattr(desired, field)
            if value is not None:
                problem = url_problem(value)
                if problem:
                    raise InvalidSpec(field, problem)
        if not isinstance(desired.body, dict):
            raise InvalidSpec("body", f"must be a JSON object, got {type(desired.body).__name__}")

    def observe(self, desired: HTTPObject) -> Remote:
        api = Api(_headers(desired.headers), float(desired.timeout_seconds), desired.verify_tls)
        kept = None if desired.url is not None else kept_location(_uid(desired))
        url = desired.url or kept
        if url is None:
            return Remote(None, None, api)
        response = api.send("GET", url)
        if response.status_code == 404:
            return Remote(url, None, api, kept is not None)
        _check("GET", url, response)
        return Remote(url, _json_object("GET", url, response), api, kept is not None)

    def plan(self, desired: HTTPObject, actual: Remote) -> list[Action]:
        if actual.body is None:
            if desired.create_url is not None:
                return [PostObject(desired.create_url, desired.body, actual.api, _uid(desired), desired.url)]
            assert actual.url is not None
            return [PutObject(actual.url, desired.body, actual.api)]
        fields = tuple(differences(desired.body, actual.body))
        if not fields:
            return []
        assert actual.url is not None
        return [PutObject(actual.url, desired.body, actual.api, fields)]

    def teardown(self, desired: HTTPObject, actual: Remote) -> list[Action]:
        if actual.url is not None and actual.exists:
            return [DeleteObject(actual.url, actual.api, _uid(desired))]
        return [ForgetLocation(_uid(desired))] if actual.kept else []

    def outputs(self, desired: HTTPObject, actual: Remote) -> dict[str, Any]:
        if actual.body is None:
            return {}
        found: dict[str, Any] = {"url": actual.url}
        if _scalar(actual.body.get("id")):
            found["id"] = actual.body["id"]
        return found

    def describe(self, actual: Remote) -> dict[str, Any]:
        return {"url": actual.url, "exists": actual.exists, **({"id": actual.body.get("id")} if actual.body else {})}


def differences(want: Any, have: Any, path: str = "") -> list[str]:
    """Where `have` differs from `want` (`spec.size`, `tags[1]`): keys only `have` has are ignored, at any depth;
    lists have the same length, their items compared alike; `1` equals `1.0`, but `true` is not `1`."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [path or "body"]
        found: list[str] = []
        for key, value in want.items():
            where = f"{path}.{key}" if path else key
            found += differences(value, have[key], where) if key in have else [where]
        return found
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return [path]
        return [d for i, (w, h) in enumerate(zip(want, have, strict=True)) for d in differences(w, h, f"{path}[{i}]")]
    return [] if _same(want, have) else [path]


def _same(want: Any, have: Any) -> bool:
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(have, numbers) and not isinstance(want, bool | type(None)):
        return not isinstance(have, bool) and want == have
    return type(want) is type(have) and want == have


def url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL with a host, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as error:
        return f"is not a URL ({error})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL with a host, got {url[:200]!r}"
    if any(c in url for c in "\r\n\t ") or not url.isprintable():
        return "must not contain spaces or control characters"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (it is shown in status): put them in the headers secret"
    return None


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks to wait (a number of seconds or an HTTP date), at most MAX_RETRY_AFTER_S."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() - now.timestamp()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def location(create_url: str, response: httpx2.Response) -> str:
    """Where the API put the object it created: its Location header (relative to create_url), else
    create_url/<the id in the answer's body>."""
    where = response.headers.get("location")
    if where:
        found = str(httpx2.URL(create_url).join(where))
    else:
        body = _json_object("POST", create_url, response, required=False)
        if body is None or not _scalar(body.get("id")):
            raise ApiRefused(f"POST {create_url} answered {response.status_code} without a Location header or an id")
        found = create_url.rstrip("/") + "/" + quote(str(body["id"]), safe="")
    problem = url_problem(found)
    if problem:
        raise ApiRefused(f"POST {create_url} answered a location that {problem}")
    if _origin(found) != _origin(create_url):  # the headers (a token) go only where the row sent them
        raise ApiRefused(f"POST {create_url} answered a location on another server: {found[:200]}")
    return found


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx2.URL(url)
    return parsed.scheme, parsed.host, parsed.port


def _check(method: str, url: str, response: httpx2.Response, *, missing_ok: bool = False) -> None:
    """Raise the error an answer that is not a success means."""
    code = response.status_code
    if 200 <= code < 300 or (missing_ok and code == 404):
        return
    said = f"{method} {url} answered {code} {response.reason_phrase}".rstrip()
    body = _shown(response)
    said += f": {body}" if body else ""
    if code >= 500 or code in (408, 429):
        after = retry_after_s(response.headers.get("retry-after"), datetime.now(UTC))
        if after is not None:
            said += f" (retry after {after:g}s)"
        raise ApiUnavailable(said, retry_after_s=after)
    raise ApiRefused(said)


def _shown(response: httpx2.Response) -> str:
    """The answer's body as one line, cut short."""
    try:
        said = " ".join(response.text.split())
    except Exception:  # undecodable: say nothing rather than fail on the message
        return ""
    return said if len(said) <= SHOWN_CHARS else said[:SHOWN_CHARS] + "…"


def _json_object(method: str, url: str, response: httpx2.Response, *, required: bool = True) -> dict[str, Any] | None:
    try:
        found = response.json()
    except ValueError:
        found = None
    if isinstance(found, dict):
        return found
    if not required:
        return None
    raise ApiRefused(f"{method} {url} answered {response.status_code} without a JSON object: {_shown(response)}")


def _headers(secret: str | None) -> tuple[tuple[str, Redacted], ...]:
    """The request headers the secret holds, each value remembered for scrubbing (alone, not only inside the
    whole secret), and never in an error message."""
    if secret is None:
        return ()
    raw = secrets.value(secret)
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise PermanentError(f'secret {secret!r} (headers) must hold a JSON object of headers: {{"Name": "value"}}')
    for name, value in found.items():
        secrets.remember(value)
        if not TOKEN.match(name):
            raise PermanentError(f"secret {secret!r} (headers) holds a header name that is not a token: {name[:64]!r}")
        if any(c in value for c in "\r\n\x00"):
            raise PermanentError(f"secret {secret!r} (headers): the value of {name} holds a line break or NUL")
    return tuple((name, Redacted(value)) for name, value in found.items())


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and value != ""


def _uid(desired: HTTPObject) -> uuid.UUID:
    assert desired.uid is not None, "a stored row always has a uid"
    return desired.uid


_clients: dict[bool, tuple[int, httpx2.Client]] = {}
_lock = threading.Lock()


def _client(verify_tls: bool) -> httpx2.Client:
    """This process's client (made after Celery's fork, never shared with the parent), bounded by LIMITS.
    Redirects are not followed: an object's URL that moved is the row's to change."""
    with _lock:
        found = _clients.get(verify_tls)
        if found is None or found[0] != os.getpid():
            found = (os.getpid(), httpx2.Client(verify=verify_tls, limits=LIMITS, follow_redirects=False))
            _clients[verify_tls] = found
        return found[1]
