"""What the MySQL/MariaDB kinds share: the server a row names, names checked, and statements built by the driver.

Every name a user chooses reaches the server quoted, never pasted: identifiers in backticks with backticks
doubled (`ident`), strings through PyMySQL's own escaping (`literal`), which follows the session's
NO_BACKSLASH_ESCAPES mode. Names are also checked first (`check_*`): no control characters, no empty user (the
anonymous account), nothing longer than the server keeps, so a name is never truncated into another one.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from worker import secrets, targets
from worker.controller import InvalidSpec
from worker.secrets import Redacted

MAX_USER = 80
"""MariaDB keeps user names of up to 80 characters (MySQL 32: it refuses longer ones itself)."""
MAX_HOST = 255
MAX_DATABASE = 64
HOST = re.compile(r"[A-Za-z0-9._%:/-]+")
"""An account's host part: a name, an address, a pattern with % and _, or address/netmask."""
CHARSET = re.compile(r"[A-Za-z0-9_]{1,64}")
"""A character set or collation name, as information_schema lists them."""


@dataclasses.dataclass(frozen=True)
class Server:
    """A MySQL server as a row names it: its secret's name (what messages show) and the URL (never shown)."""

    secret: str
    url: Redacted

    def __str__(self) -> str:
        return f"server {self.secret!r}"


def server(secret: str) -> Server:
    return Server(secret, Redacted(secrets.value(secret)))


def ident(name: str) -> str:
    """An identifier quoted for MySQL: in backticks, each backtick doubled."""
    return "`" + name.replace("`", "``") + "`"


def literal(conn: Connection, value: str) -> str:
    """A string literal quoted by PyMySQL for this connection (it knows the session's escaping mode)."""
    driver: Any = conn.connection.driver_connection
    return str(driver.escape(value))


def account(conn: Connection, user: str, host: str) -> str:
    return f"{literal(conn, user)}@{literal(conn, host)}"


def shown_account(user: str, host: str) -> str:
    """An account as messages show it, 'user'@'host'."""
    return "'" + user.replace("'", "''") + "'@'" + host + "'"


def grant_pattern(database: str) -> str:
    """A database name as a GRANT must spell it to mean that database alone: `_` and `%` are wildcards there."""
    return database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")


def execute(srv: Server, build: Callable[[Connection], str]) -> None:
    """Run the statement `build` makes with the connection (which quotes), passing no parameters at all: PyMySQL
    then leaves the text as it is, a `%` in a quoted name included."""
    with targets.connect(srv.url.value) as conn:
        conn.exec_driver_sql(build(conn), execution_options={"no_parameters": True})


def _checked(field: str, value: str, what: str, longest: int) -> None:
    if not value:
        raise InvalidSpec(field, f"{what} cannot be empty")
    if len(value) > longest:
        raise InvalidSpec(field, f"{what} of at most {longest} characters, got {len(value)}")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidSpec(field, f"{what} without control characters, got {value!r}")
    if value != value.strip():
        raise InvalidSpec(field, f"{what} without leading or trailing spaces, got {value!r}")


def check_user(field: str, value: str) -> None:
    _checked(field, value, "a user name", MAX_USER)


def check_host(field: str, value: str) -> None:
    _checked(field, value, "a host", MAX_HOST)
    if not HOST.fullmatch(value):
        raise InvalidSpec(field, f"a host name, address or pattern ('%', 'localhost', '10.0.0.%'), got {value!r}")


def check_database(field: str, value: str) -> None:
    _checked(field, value, "a database name", MAX_DATABASE)
    if any(c in value for c in "/\\."):
        raise InvalidSpec(field, f"a database name without '/', '\\' or '.', got {value!r}")


def check_charset(field: str, value: str) -> None:
    if not CHARSET.fullmatch(value):
        raise InvalidSpec(field, f"a name such as 'utf8mb4' or 'utf8mb4_bin' (letters, digits, '_'), got {value!r}")
