"""Secret values, read by the worker at reconcile time and kept out of everything it writes.

A controller calls `value(name)` where it needs one (a server's URL, a password); `{{ Secret/NAME }}` in a
templated field is resolved through it too (worker/references.py). Every value read during a reconcile is
remembered (`recording`), and the runtime scrubs each of them from the status, the run history and the logs it
writes (`scrub`), so a driver's error message that quotes a URL or a password never reaches them. A value
shorter than MIN_SCRUBBED characters is not scrubbed: it would mangle every message and protects nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import text

from setpoint.errors import PermanentError
from worker.side_engine import engine

MIN_SCRUBBED = 4
MASK = "***"

_used: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("setpoint_secrets_used", default=None)


class MissingSecret(PermanentError):
    """A secret named by a resource does not exist (its resource is normally Waiting before it gets here)."""


@dataclasses.dataclass(frozen=True)
class Redacted:
    """A secret value that does not show itself: `repr` and `str` give `***`, `.value` the value."""

    value: str = dataclasses.field(repr=False)

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Redacted({MASK})"


def value(name: str) -> str:
    """The value of secret `name`, now; remembered for scrubbing until the reconcile ends."""
    with engine().connect() as conn:
        found = conn.execute(text("SELECT value FROM secrets WHERE name = :name"), {"name": name}).scalar()
    if found is None:
        raise MissingSecret(f"secret {name!r} does not exist (setpoint secret set {name})")
    remember(str(found))
    return str(found)


def remember(secret: str) -> None:
    """Scrub `secret` (and, for a URL, the password in it) from what this reconcile writes."""
    used = _used.get()
    if used is None:
        return
    used.add(secret)
    with contextlib.suppress(ValueError):
        parts = urlsplit(secret)
        hidden = [parts.password or ""]
        hidden += [v for k, values in parse_qs(parts.query).items() if "pass" in k.lower() for v in values]
        for password in filter(None, hidden):  # `…@host/db?password=…` is a libpq URL too
            used.update({password, unquote(password)})


@contextlib.contextmanager
def recording() -> Iterator[set[str]]:
    """Remember every value read inside the block; the set holds them."""
    used: set[str] = set()
    token = _used.set(used)
    try:
        yield used
    finally:
        _used.reset(token)


def scrub_read(value: Any) -> Any:
    """`value` without the secrets read so far in this reconcile: for a log line written before it ends."""
    return scrub(value, _used.get() or set())


def scrub(value: Any, secrets: set[str]) -> Any:
    """`value` (a string, or JSON made of lists and dicts) with every secret replaced by `***`."""
    wanted = sorted((s for s in secrets if len(s) >= MIN_SCRUBBED), key=len, reverse=True)
    if not wanted:
        return value
    if isinstance(value, str):
        for secret in wanted:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, (list, tuple, dict)):
        encoded = json.dumps(value)
        if any(json.dumps(secret)[1:-1] in encoded for secret in wanted):
            return json.loads(scrub(encoded, {json.dumps(s)[1:-1] for s in wanted}))
    return value
