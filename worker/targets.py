"""Connections to the servers that database kinds manage (PostgreSQL, MySQL/MariaDB): pooled per worker process
and bounded, so a thousand roles reconciled at once open at most a few connections to their server.

A server is named by a secret holding its URL (`postgresql://admin:…@db:5432/postgres`, `mysql://root:…@db/`);
`engine(url)` gives a SQLAlchemy engine for it (the same one for the same URL in this process; at most
MAX_SERVERS kept, the least recently used disposed). A server that cannot be reached is a TransientError naming
it without its password; credentials refused are a PermanentError (nothing will change until the row or the
secret does).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from setpoint.errors import PermanentError, TransientError

POOL_SIZE = 2
MAX_OVERFLOW = 2
"""At most POOL_SIZE + MAX_OVERFLOW connections per server per worker process."""
POOL_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5
MAX_SERVERS = 16
DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg", "mysql": "mysql+pymysql",
           "mariadb": "mysql+pymysql"}  # fmt: skip

BUSY_WORDS = ("starting up", "shutting down", "too many", "recovery", "connection slots", "terminating connection")
"""What a PostgreSQL refusal without a code says when it is the server's state, not the caller's credentials."""
STATEMENT_TIMEOUTS: dict[str, dict[str, object]] = {
    "postgresql+psycopg": {"options": "-c lock_timeout=10s -c statement_timeout=60s"},
    "mysql+pymysql": {"read_timeout": 60, "write_timeout": 60},
}
"""A statement waiting on a lock (a GRANT behind a long transaction) gives up and is retried, rather than holding a
worker process until its task's time limit."""

_engines: collections.OrderedDict[str, tuple[int, Engine]] = collections.OrderedDict()
_lock = threading.Lock()


class ServerUnreachable(TransientError):
    """The server cannot be reached now; retried with backoff."""


class AccessDenied(PermanentError):
    """The server refused the credentials or the operation; nothing changes until the row or the secret does."""


def parse(url: str) -> URL:
    """The server's URL with its driver; InvalidSpec-like PermanentError if it is not one we know."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise PermanentError("the server's secret does not hold a URL (postgresql://… or mysql://…)") from None
    backend = parsed.drivername.split("+")[0]
    if backend not in DRIVERS:
        raise PermanentError(f"the server's secret holds a {backend!r} URL; expected postgresql://… or mysql://…")
    return parsed.set(drivername=DRIVERS[backend])


def shown(url: URL) -> str:
    """The server as status may say it: no password, and no query (libpq also takes `?password=…` there)."""
    plain = url.set(drivername=url.drivername.split("+")[0], query={})
    return plain.render_as_string(hide_password=True)


def engine(url: str) -> Engine:
    parsed = parse(url)
    key = hashlib.sha256(url.encode()).hexdigest()
    with _lock:
        found = _engines.get(key)
        if found is not None and found[0] == os.getpid():
            _engines.move_to_end(key)
            return found[1]
        args: dict[str, object] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            **STATEMENT_TIMEOUTS.get(parsed.drivername, {}),
        }
        made = create_engine(
            parsed, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, pool_timeout=POOL_TIMEOUT_S,
            pool_pre_ping=True, connect_args=args,
        )  # fmt: skip
        _engines[key] = (os.getpid(), made)
        while len(_engines) > MAX_SERVERS:
            _, (pid, old) = _engines.popitem(last=False)
            old.dispose(close=pid == os.getpid())
        return made


@contextlib.contextmanager
def connect(url: str, *, autocommit: bool = True) -> Iterator[Connection]:
    """A pooled connection to the server; its failures become ServerUnreachable or AccessDenied, naming it."""
    parsed = parse(url)
    try:
        with engine(url).connect() as conn:
            if autocommit:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
    except PoolTimeout:
        raise ServerUnreachable(f"{shown(parsed)}: all {POOL_SIZE + MAX_OVERFLOW} connections busy") from None
    except DBAPIError as error:
        raise classify(parsed, error) from None


def classify(url: URL, error: DBAPIError) -> Exception:
    """What a driver's error means for the reconcile: retry later, or wait for the row or the secret to change."""
    first = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
    code = getattr(error.orig, "sqlstate", None) or ""
    mysql_code = error.orig.args[0] if error.orig is not None and error.orig.args else None
    if code:  # the server's own verdict: the class of its SQLSTATE
        denied_pg = code.startswith(("28", "3D")) or code == "42501"  # authorization, no such database, privilege
        busy_pg = code.startswith(("08", "53", "57P"))  # connection, resources, shutdown or restart
    else:  # refused before the server gave a code (at connection time): read its words
        busy_pg = any(word in first for word in BUSY_WORDS)
        denied_pg = "FATAL:" in first and not busy_pg  # no such role or database, a password, pg_hba.conf
    denied_mysql = mysql_code in (1044, 1045, 1142, 1227)
    if denied_pg or denied_mysql:
        return AccessDenied(f"{shown(url)}: {first}")
    unreachable = isinstance(error, OperationalError) and (not code or busy_pg)
    if error.connection_invalidated or unreachable or mysql_code in (2002, 2003, 2006, 2013):
        return ServerUnreachable(f"{shown(url)}: {first}")
    return error
