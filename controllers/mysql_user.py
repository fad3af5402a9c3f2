"""The MySQLUser kind's controller: the account 'user'@'host' exists on its server, with the password its secret holds.

A password changed out of band is found by comparing what the server stores, never by logging in: the account
is kept on mysql_native_password, whose stored string is '*' and the upper-case hex of SHA1(SHA1(password)), which
the worker computes from the secret and compares with mysql.user's `plugin` and `authentication_string`. Any other
plugin or string is drift, set back with ALTER USER … IDENTIFIED WITH mysql_native_password AS '<hash>', so the
password itself never crosses the wire nor reaches the server's logs (MariaDB, and MySQL up to 8.0, whose 8.4
leaves that plugin off unless enabled). A NULL `password` creates the account without one and leaves its
password alone afterwards: clearing one an admin set would open the account to anyone.
Deleting the row drops the account (and with it every privilege it holds).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from controllers import mysql_server
from controllers.mysql_server import Server, account, shown_account
from models.mysql import MySQLUser
from worker import secrets, targets
from worker.controller import Action, Controller
from worker.secrets import Redacted

NATIVE = "mysql_native_password"


def native_hash(password: str) -> str:
    """What MySQL's PASSWORD() gives and mysql_native_password stores: '*' + HEX(SHA1(SHA1(password)))."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def user_of(desired: MySQLUser) -> str:
    return desired.external_name or desired.name


@dataclasses.dataclass(frozen=True)
class UserState:
    """The account on the server: whether it exists, its plugin, and how its password compares with the secret's
    ('matches', 'differs', or 'unmanaged' when the row names no password)."""

    exists: bool
    plugin: str | None = None
    password: str = "unmanaged"


@dataclasses.dataclass(frozen=True)
class Seen:
    state: UserState
    server: Server
    wanted: Redacted | None
    """The hash of the secret's password, or None when the row names none."""
    missing: str | None = None
    """Why the password could not be read (its secret is gone): the account is left alone, and dropped on delete."""


@dataclasses.dataclass(frozen=True)
class CreateUser(Action):
    server: Server
    user: str
    host: str
    hashed: Redacted | None
    password_secret: str | None

    def run(self) -> None:
        def build(conn: Any) -> str:
            statement = f"CREATE USER IF NOT EXISTS {account(conn, self.user, self.host)}"
            if self.hashed is not None:
                statement += f" IDENTIFIED WITH {NATIVE} AS {mysql_server.literal(conn, self.hashed.value)}"
            return statement

        mysql_server.execute(self.server, build)

    def __str__(self) -> str:
        said = f"with the password of secret {self.password_secret!r}" if self.password_secret else "without password"
        return f"create user {shown_account(self.user, self.host)} on {self.server} {said}"


@dataclasses.dataclass(frozen=True)
class SetPassword(Action):
    server: Server
    user: str
    host: str
    hashed: Redacted
    password_secret: str

    def run(self) -> None:
        mysql_server.execute(
            self.server,
            lambda conn: (
                f"ALTER USER {account(conn, self.user, self.host)} "
                f"IDENTIFIED WITH {NATIVE} AS {mysql_server.literal(conn, self.hashed.value)}"
            ),
        )

    def __str__(self) -> str:
        return (
            f"set the password of {shown_account(self.user, self.host)} on {self.server} back to secret "
            f"{self.password_secret!r} (it was changed outside Setpoint)"
        )


@dataclasses.dataclass(frozen=True)
class DropUser(Action):
    server: Server
    user: str
    host: str

    def run(self) -> None:
        mysql_server.execute(self.server, lambda conn: f"DROP USER IF EXISTS {account(conn, self.user, self.host)}")

    def __str__(self) -> str:
        return f"drop user {shown_account(self.user, self.host)} on {self.server}"


def observe_account(srv: Server, user: str, host: str) -> tuple[str, str] | None:
    """(plugin, authentication_string) of the account, or None if it does not exist."""
    with targets.connect(srv.url.value) as conn:
        row = conn.exec_driver_sql(
            "SELECT plugin, authentication_string FROM mysql.user WHERE User = %s AND Host = %s", (user, host)
        ).first()
    return None if row is None else (str(row[0] or ""), str(row[1] or ""))


class MySQLUserController(Controller[MySQLUser, Seen]):
    model = MySQLUser

    def validate(self, desired: MySQLUser) -> None:
        mysql_server.check_user("external_name" if desired.external_name else "name", user_of(desired))
        mysql_server.check_host("host", desired.host)

    def observe(self, desired: MySQLUser) -> Seen:
        srv = mysql_server.server(desired.server)
        wanted = None
        missing = None
        if desired.password is not None:
            try:
                hashed = native_hash(secrets.value(desired.password))
            except secrets.MissingSecret as error:
                missing = str(error)  # a teardown needs no password; a create without one would open the account
            else:
                secrets.remember(hashed)  # as good as the password to whoever speaks the protocol: never shown
                wanted = Redacted(hashed)
        found = observe_account(srv, user_of(desired), desired.host)
        if found is None:
            return Seen(UserState(exists=False), srv, wanted, missing)
        plugin, stored = found
        password = "unmanaged"
        if wanted is not None:
            password = "matches" if (plugin, stored) == (NATIVE, wanted.value) else "differs"
        return Seen(UserState(True, plugin, password), srv, wanted, missing)

    def plan(self, desired: MySQLUser, actual: Seen) -> list[Action]:
        user, host = user_of(desired), desired.host
        if actual.missing is not None:
            raise secrets.MissingSecret(actual.missing)
        if not actual.state.exists:
            return [CreateUser(actual.server, user, host, actual.wanted, desired.password)]
        if actual.state.password == "differs" and actual.wanted is not None and desired.password is not None:
            return [SetPassword(actual.server, user, host, actual.wanted, desired.password)]
        return []

    def teardown(self, desired: MySQLUser, actual: Seen) -> list[Action]:
        return [DropUser(actual.server, user_of(desired), desired.host)] if actual.state.exists else []

    def outputs(self, desired: MySQLUser, actual: Seen) -> dict[str, Any]:
        return {"name": user_of(desired), "host": desired.host}

    def describe(self, actual: Seen) -> dict[str, Any]:
        return dataclasses.asdict(actual.state)
