"""MySQLUser, MySQLDatabase and MySQLGrant against the machine's real MariaDB, reconciled by the real stack.

Every test names its users and databases after `unique` and removes them; MariaDB's root (127.0.0.1, no password)
checks what is there, as a DBA would. A test needing MariaDB is skipped where none answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from controllers.mysql_grant import ALL, Grant, GrantState, MySQLGrantController, Revoke, parse_grants
from controllers.mysql_grant import Seen as GrantSeen
from controllers.mysql_server import Server
from controllers.mysql_user import native_hash
from models.mysql import MySQLGrant
from setpoint.errors import InvalidSpec
from tests.conftest import wait_for
from tests.helpers import ready_at, runs, sql, stack_log, status, unwatched
from worker.secrets import Redacted

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "autocommit": True}
ROOT_URL = "mysql://root@127.0.0.1:3306/"
TABLES = {"MySQLUser": "mysql_users", "MySQLDatabase": "mysql_databases", "MySQLGrant": "mysql_grants"}


def _admin() -> pymysql.Connection[Any]:
    return pymysql.connect(**MARIADB)  # type: ignore[arg-type]


def _mariadb_answers() -> bool:
    try:
        _admin().close()
    except pymysql.Error:
        return False
    return True


# Skipped only on a developer's machine without MariaDB; in CI (which starts it, .ci/run) a missing server fails.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not _mariadb_answers(), reason="no MariaDB at 127.0.0.1:3306 (root, no password)"
)


def _query(statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(_admin()) as conn, conn.cursor() as cur:
        cur.execute(statement, args or None)
        return list(cur.fetchall())


def _databases(prefix: str) -> set[str]:
    """The databases whose names start with `prefix` ('' for all of them)."""
    return {
        row[0] for row in _query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA") if row[0].startswith(prefix)
    }


def _users(prefix: str) -> set[tuple[str, str]]:
    return {(u, h) for u, h in _query("SELECT User, Host FROM mysql.user") if u.startswith(prefix)}


def _grants(user: str, host: str = "%") -> list[str]:
    return [row[0] for row in _query("SHOW GRANTS FOR %s@%s", user, host)]


def _login(user: str, password: str, database: str | None = None) -> bool:
    try:
        pymysql.connect(host="127.0.0.1", port=3306, user=user, password=password, database=database).close()
    except pymysql.err.OperationalError:
        return False
    return True


def _secret(engine: Engine, name: str, value: str) -> None:
    sql(
        engine,
        "INSERT INTO secrets (name, value) VALUES (:n, :v) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        n=name,
        v=value,
    )


def _insert(engine: Engine, kind: str, **columns: Any) -> None:
    names = ", ".join(f'"{column}"' for column in columns)
    values = ", ".join(f":{column}" for column in columns)
    sql(engine, f"INSERT INTO {TABLES[kind]} ({names}) VALUES ({values})", **columns)


def _delete(engine: Engine, kind: str, name: str) -> None:
    sql(engine, f"DELETE FROM {TABLES[kind]} WHERE name = :n", n=name)


def _gone(engine: Engine, kind: str, name: str) -> bool:
    return status(engine, name, kind) is None


def _ready_message(row: dict[str, Any] | None) -> str:
    assert row is not None
    return str(next(c for c in row["conditions"] if c["type"] == "Ready")["message"])


def _said(row: dict[str, Any] | None, words: str) -> dict[str, Any] | None:
    """The status row if its Ready condition's message has `words`."""
    return row if row is not None and words in _ready_message(row) else None


def _everything_written(engine: Engine, prefix: str) -> str:
    """Every statuses and runs row of the test's resources, as text."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM statuses AS s WHERE name LIKE :p "
                "UNION ALL SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]') FROM runs AS r WHERE name LIKE :p"
            ),
            {"p": prefix + "%"},
        ).scalars()
        return json.dumps(list(found))


@pytest.fixture
def mysql_clean(engine: Engine, unique: str) -> Iterator[str]:
    """The test's prefix; afterwards its rows are deleted (and torn down), then whatever MariaDB still holds under
    the prefix is dropped."""
    yield unique
    for kind in ("MySQLGrant", "MySQLUser", "MySQLDatabase"):
        sql(engine, f"DELETE FROM {TABLES[kind]} WHERE name LIKE :p", p=unique + "%")
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not _query_statuses(engine, unique), 20, "the test's resources torn down before cleaning up")
    for user, host in _users(unique):
        _query("DROP USER IF EXISTS %s@%s", user, host)
    with contextlib.closing(_admin()) as conn, conn.cursor() as cur:
        for database in _databases(unique):
            cur.execute("DROP DATABASE IF EXISTS `" + database.replace("`", "``") + "`")
    sql(engine, "DELETE FROM secrets WHERE name LIKE :p", p=unique + "%")


def _query_statuses(engine: Engine, prefix: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT name FROM statuses WHERE name LIKE :p"), {"p": prefix + "%"}))


def test_user_database_and_grant_are_created_healed_rotated_and_removed_from_sql_rows(
    stack: dict[str, str], engine: Engine, mysql_clean: str
) -> None:
    unique = mysql_clean
    srv, pw = f"{unique}-srv", f"{unique}-pw"
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    _secret(engine, srv, ROOT_URL)
    _secret(engine, pw, first)
    user, db, grant = f"{unique}-app", f"{unique}-db", f"{unique}-grant"
    _insert(engine, "MySQLUser", name=user, server=srv, password=pw, interval_seconds=1)
    _insert(engine, "MySQLDatabase", name=db, server=srv, interval_seconds=300)  # looked at when told to
    _insert(
        engine,
        "MySQLGrant",
        name=grant,
        server=srv,
        user_name=user,
        database=db,
        privileges=["select", "INSERT", "create"],
        depends_on=[f"MySQLUser/{user}", f"MySQLDatabase/{db}"],
        interval_seconds=1,
    )
    for kind, name in (("MySQLUser", user), ("MySQLDatabase", db), ("MySQLGrant", grant)):
        wait_for(lambda: ready_at(engine, name, 1, kind), 30, f"{kind} {name} ready")  # noqa: B023
    assert status(engine, user, "MySQLUser")["outputs"] == {"name": user, "host": "%"}  # type: ignore[index]
    assert status(engine, db, "MySQLDatabase")["outputs"] == {"name": db}  # type: ignore[index]
    assert _users(unique) == {(user, "%")}
    assert _databases(unique) == {db}
    assert f"GRANT SELECT, INSERT, CREATE ON `{db}`.* TO `{user}`@`%`" in _grants(user)
    assert _login(user, first, db)

    # A REVOKE by hand is put back.
    _query(f"REVOKE INSERT ON `{db}`.* FROM %s@'%%'", user)
    assert f"GRANT SELECT, CREATE ON `{db}`.* TO `{user}`@`%`" in _grants(user)
    started = time.monotonic()
    wait_for(lambda: f"GRANT SELECT, INSERT, CREATE ON `{db}`.* TO `{user}`@`%`" in _grants(user), 20, "re-granted")
    print(f"REVOKE by hand -> granted again: {time.monotonic() - started:.2f} s (interval 1 s)")

    # A password changed by hand is set back; a rotated secret is applied within seconds.
    _query("ALTER USER %s@'%%' IDENTIFIED BY 'by-hand'", user)
    started = time.monotonic()
    wait_for(lambda: _login(user, first), 20, "the password set back to the secret's")
    print(f"password changed by hand -> set back: {time.monotonic() - started:.2f} s (interval 1 s)")
    sql(engine, "UPDATE secrets SET value = :v WHERE name = :n", v=second, n=pw)
    started = time.monotonic()
    wait_for(lambda: _login(user, second, db), 20, "the rotated password applied")
    print(f"secret rotated -> new password works: {time.monotonic() - started:.2f} s")
    assert not _login(user, first)

    # DROP DATABASE by hand: created again at the next look, and status and history say the data was lost.
    _query(f"DROP DATABASE `{db}`")
    started = time.monotonic()
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE kind = 'MySQLDatabase' AND name = :n", n=db)
    wait_for(lambda: db in _databases(unique), 20, "the database created again")
    print(f"DROP DATABASE by hand, then due -> created again: {time.monotonic() - started:.2f} s")
    said = "dropped outside Setpoint and the data it held was lost"
    row = wait_for(lambda: _said(ready_at(engine, db, 1, "MySQLDatabase"), said), 20, "status saying the data was lost")
    assert row["ready"], row
    lost = [a for r in runs(engine, db, "MySQLDatabase") for a in r["actions"] if "data it held was lost" in a]
    assert len(lost) == 1, runs(engine, db, "MySQLDatabase")

    # Deleting the rows drops the user (and so its grant) and leaves the database: its policy is 'orphan'.
    _delete(engine, "MySQLGrant", grant)
    wait_for(lambda: _gone(engine, "MySQLGrant", grant), 20, "grant torn down")
    assert not any(f"ON `{db}`" in line for line in _grants(user))  # revoked: the user itself is still there
    _delete(engine, "MySQLUser", user)
    _delete(engine, "MySQLDatabase", db)
    wait_for(lambda: _gone(engine, "MySQLUser", user) and _gone(engine, "MySQLDatabase", db), 20, "rows gone")
    assert _users(unique) == set()
    assert _databases(unique) == {db}

    # No secret value anywhere Setpoint writes.
    written = _everything_written(engine, unique) + stack_log(stack)
    for secret in (first, second, native_hash(first), native_hash(second)):
        assert secret not in written


def test_a_database_is_dropped_with_its_row_only_when_its_deletion_policy_says_delete(
    stack: dict[str, str], engine: Engine, mysql_clean: str
) -> None:
    unique = mysql_clean
    srv, kept, dropped = f"{unique}-srv", f"{unique}-kept", f"{unique}-dropped"
    _secret(engine, srv, ROOT_URL)
    _insert(engine, "MySQLDatabase", name=kept, server=srv, character_set="latin1")
    _insert(engine, "MySQLDatabase", name=dropped, server=srv, deletion_policy="delete", collation_name="utf8mb4_bin")
    wait_for(lambda: ready_at(engine, kept, 1, "MySQLDatabase"), 30, "kept ready")
    wait_for(lambda: ready_at(engine, dropped, 1, "MySQLDatabase"), 30, "dropped ready")
    charsets = dict(
        (row[0], row[1:])
        for row in _query(
            "SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA"
        )
    )
    assert charsets[kept][0] == "latin1"
    assert charsets[dropped] == ("utf8mb4", "utf8mb4_bin")
    sql(engine, "UPDATE mysql_databases SET character_set = 'utf8mb4' WHERE name = :n", n=kept)
    wait_for(lambda: ready_at(engine, kept, 2, "MySQLDatabase"), 30, "kept altered")
    assert _query(
        "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", kept
    ) == [("utf8mb4",)]
    _delete(engine, "MySQLDatabase", kept)
    _delete(engine, "MySQLDatabase", dropped)
    wait_for(lambda: dropped not in _databases(unique), 20, "the 'delete' database dropped")
    wait_for(lambda: _gone(engine, "MySQLDatabase", dropped), 20, "its status gone")
    assert _databases(unique) == {kept}


class Forwarder:
    """A TCP port that forwards to MariaDB once `open()` is called: a server that is down, then back."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # closed: nothing listens there until open()
        self._server: socket.socket | None = None

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", 3306))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def test_a_server_that_is_down_is_named_without_password_retried_and_holds_nobody_else_up(
    stack: dict[str, str], engine: Engine, mysql_clean: str
) -> None:
    unique = mysql_clean
    admin, password = f"{unique}-admin", f"pw-{uuid.uuid4().hex}"
    _query("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", admin, password)
    _query("GRANT ALL PRIVILEGES ON *.* TO %s@'127.0.0.1'", admin)
    forwarder = Forwarder()
    try:
        down, up = f"{unique}-down", f"{unique}-up"
        _secret(engine, down, f"mysql://{admin}:{password}@127.0.0.1:{forwarder.port}/")
        _secret(engine, up, ROOT_URL)
        waiting, other = f"{unique}-waiting", f"{unique}-other"
        _insert(engine, "MySQLDatabase", name=waiting, server=down)
        _insert(engine, "MySQLDatabase", name=other, server=up)

        def failing_again() -> dict[str, Any] | None:
            row = status(engine, waiting, "MySQLDatabase")
            return row if row and row["phase"] == "Failed" and row["consecutive_failures"] >= 2 else None

        row = wait_for(failing_again, 30, "the resource on the down server failing and retried")
        assert row is not None
        message = _ready_message(row)
        assert f"127.0.0.1:{forwarder.port}" in message and "will retry" in message, message
        assert password not in message
        wait_for(lambda: ready_at(engine, other, 1, "MySQLDatabase"), 30, "the other server's database, meanwhile")

        forwarder.open()  # the server is back
        wait_for(lambda: ready_at(engine, waiting, 1, "MySQLDatabase"), 30, "converged once the server is back")
        assert waiting in _databases(unique)
        assert password not in _everything_written(engine, unique)
        assert password not in stack_log(stack)
    finally:
        sql(engine, "DELETE FROM mysql_databases WHERE name LIKE :p", p=unique + "%")
        wait_for(lambda: not _query_statuses(engine, unique), 20, "rows gone")
        forwarder.close()
        _query("DROP USER IF EXISTS %s@'127.0.0.1'", admin)


def test_hostile_names_are_quoted_and_nothing_but_the_intended_objects_is_created_or_dropped(
    stack: dict[str, str], engine: Engine, mysql_clean: str
) -> None:
    unique = mysql_clean
    srv = f"{unique}-srv"
    _secret(engine, srv, ROOT_URL)
    canary = f"{unique}canary"
    _query(f"CREATE DATABASE `{canary}`")
    _query(f"CREATE DATABASE `{unique}Xdb`")  # what a '_' wildcard in a GRANT would match
    before = _databases("")
    users_before = _users("")
    hostile = f"{unique}'`; DROP DATABASE `{canary}`; -- a%_db"
    hostile_db = f"{unique}_db`; DROP DATABASE {canary}; '"
    _insert(engine, "MySQLUser", name=f"{unique}-u", server=srv, external_name=hostile, interval_seconds=1)
    _insert(
        engine,
        "MySQLDatabase",
        name=f"{unique}-d",
        server=srv,
        external_name=hostile_db,
        deletion_policy="delete",
        interval_seconds=1,
    )
    _insert(
        engine,
        "MySQLGrant",
        name=f"{unique}-g",
        server=srv,
        user_name=hostile,
        database=hostile_db,
        privileges=["SELECT"],
        depends_on=[f"MySQLUser/{unique}-u", f"MySQLDatabase/{unique}-d"],
        interval_seconds=1,
    )
    for kind, name in (("MySQLUser", "u"), ("MySQLDatabase", "d"), ("MySQLGrant", "g")):
        wait_for(lambda: ready_at(engine, f"{unique}-{name}", 1, kind), 30, f"{kind} ready")  # noqa: B023
    assert _databases("") == before | {hostile_db}
    assert _users("") == users_before | {(hostile, "%")}
    escaped = hostile_db.replace("_", "\\_").replace("`", "``")
    db_lines = [line for line in _grants(hostile) if " ON `" in line and "*.*" not in line]
    assert len(db_lines) == 1 and db_lines[0].startswith(f"GRANT SELECT ON `{escaped}`.*"), db_lines
    assert _query("SELECT Db FROM mysql.db WHERE User = %s", hostile) == [(hostile_db.replace("_", "\\_"),)]

    # Refused, naming the field: a privilege that is not one, and a name with a control character.
    _insert(
        engine,
        "MySQLGrant",
        name=f"{unique}-bad",
        server=srv,
        user_name=hostile,
        database=f"{unique}-other",
        privileges=["SELECT ON *.* TO root; --"],
    )
    _insert(engine, "MySQLDatabase", name=f"{unique}-nul", server=srv, external_name=f"{unique}\x01x")
    bad = wait_for(lambda: _phase(engine, f"{unique}-bad", "MySQLGrant", "Invalid"), 20, "the bad grant invalid")
    assert _ready_message(bad).startswith("privileges: 'SELECT ON *.* TO root; --': not a database privilege")
    nul = wait_for(lambda: _phase(engine, f"{unique}-nul", "MySQLDatabase", "Invalid"), 20, "invalid name")
    assert _ready_message(nul).startswith("external_name: a database name without control characters")

    for kind, name in (("MySQLGrant", "bad"), ("MySQLDatabase", "nul"), ("MySQLGrant", "g")):
        _delete(engine, kind, f"{unique}-{name}")
    wait_for(lambda: _gone(engine, "MySQLGrant", f"{unique}-g"), 20, "grant torn down")
    assert _query("SELECT Db FROM mysql.db WHERE User = %s", hostile) == []
    _delete(engine, "MySQLUser", f"{unique}-u")
    _delete(engine, "MySQLDatabase", f"{unique}-d")
    wait_for(lambda: not _query_statuses(engine, unique), 20, "all torn down")
    assert _databases("") == before
    assert _users("") == users_before


def _phase(engine: Engine, name: str, kind: str, phase: str) -> dict[str, Any] | None:
    row = status(engine, name, kind)
    return row if row and row["phase"] == phase else None


def test_the_columns_naming_the_real_object_cannot_change(engine: Engine, unique: str) -> None:
    _secret(engine, f"{unique}-srv", ROOT_URL)
    unwatched(engine, "INSERT INTO mysql_users (name, server, paused) VALUES (:n, :s, true)", unique, s=f"{unique}-srv")
    with pytest.raises(IntegrityError, match="host is immutable: mysql_users"):
        sql(engine, "UPDATE mysql_users SET host = 'localhost' WHERE name = :n", n=unique)
    with engine.connect() as conn:
        policy = conn.execute(
            text("INSERT INTO mysql_databases (name, server, paused) VALUES (:n, :s, true) RETURNING deletion_policy"),
            {"n": unique, "s": f"{unique}-srv"},
        ).scalar()
        conn.rollback()
    assert policy == "orphan"
    sql(engine, "DELETE FROM mysql_users WHERE name = :n", n=unique)
    sql(engine, "DELETE FROM secrets WHERE name = :n", n=f"{unique}-srv")


def test_a_missing_server_secret_is_named_and_its_arrival_converges_the_resource(
    stack: dict[str, str], engine: Engine, mysql_clean: str
) -> None:
    unique = mysql_clean
    srv, db = f"{unique}-later", f"{unique}-db"
    _insert(engine, "MySQLDatabase", name=db, server=srv, interval_seconds=300)
    row = wait_for(
        lambda: _phase(engine, db, "MySQLDatabase", "Waiting") or _phase(engine, db, "MySQLDatabase", "Failed"),
        20,
        "held",
    )
    print(f"missing secret: phase {row['phase']}: {_ready_message(row)}")
    assert f"Secret/{srv}" in _ready_message(row) or f"secret {srv!r}" in _ready_message(row)
    assert db not in _databases(unique)
    _secret(engine, srv, ROOT_URL)
    wait_for(lambda: ready_at(engine, db, 1, "MySQLDatabase"), 20, "ready once the secret exists")
    assert db in _databases(unique)


def _grant_row(*privileges: str) -> MySQLGrant:
    return MySQLGrant(name="g", server="s", user_name="app", database="app_db", privileges=list(privileges))


SERVER = Server("s", Redacted("mysql://root@db/"))


@pytest.mark.parametrize(
    ("wanted", "held", "expected"),
    [
        (("select", "insert"), ("INSERT", "SELECT"), []),
        (("SELECT", "INSERT"), ("SELECT",), [Grant(SERVER, "app", "%", "app_db", ("INSERT",))]),
        (("SELECT",), ("SELECT", "DROP"), [Revoke(SERVER, "app", "%", "app_db", ("DROP",))]),
        (
            ("SELECT",),
            (ALL,),
            [Revoke(SERVER, "app", "%", "app_db", (ALL,)), Grant(SERVER, "app", "%", "app_db", ("SELECT",))],
        ),
        (("all", "SELECT"), ("SELECT",), [Grant(SERVER, "app", "%", "app_db", (ALL,))]),
        (("ALL PRIVILEGES",), (ALL,), []),
    ],
)
def test_a_grant_plans_exactly_the_difference_between_its_privileges_and_the_accounts(
    wanted: tuple[str, ...], held: tuple[str, ...], expected: list[Any]
) -> None:
    seen = GrantSeen(GrantState(True, tuple(sorted(held))), SERVER)
    assert MySQLGrantController().plan(_grant_row(*wanted), seen) == expected


def test_a_deleted_grant_revokes_what_it_granted_and_nothing_else_the_account_holds() -> None:
    seen = GrantSeen(GrantState(True, ("DROP", "INSERT", "SELECT")), SERVER)
    assert MySQLGrantController().teardown(_grant_row("SELECT", "UPDATE"), seen) == [
        Revoke(SERVER, "app", "%", "app_db", ("SELECT",))
    ]
    assert MySQLGrantController().teardown(_grant_row("SELECT"), GrantSeen(GrantState(False), SERVER)) == []


def test_show_grants_is_read_for_that_database_only_its_wildcards_escaped() -> None:
    lines = [
        "GRANT USAGE ON *.* TO `app`@`%`",
        "GRANT SELECT, INSERT ON `app\\_db`.* TO `app`@`%`",
        "GRANT DROP ON `app_db`.* TO `app`@`%`",  # a pattern matching appXdb too: not this grant
        "GRANT ALL PRIVILEGES ON `odd``name`.* TO `app`@`%` WITH GRANT OPTION",
        "GRANT UPDATE ON `app\\_db`.`t` TO `app`@`%`",
    ]
    assert parse_grants(lines, "app_db") == {"SELECT", "INSERT"}
    assert parse_grants(lines, "odd`name") == {ALL}


def test_the_stored_password_hash_is_mysql_native_passwords() -> None:
    assert native_hash("password") == "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"  # SELECT PASSWORD('password')


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (MySQLGrant(name="g", server="s", user_name="", database="d", privileges=["SELECT"]), "user_name"),
        (MySQLGrant(name="g", server="s", user_name="u", host="h'; --", database="d", privileges=["SELECT"]), "host"),
        (MySQLGrant(name="g", server="s", user_name="u", database="a/b", privileges=["SELECT"]), "database"),
        (MySQLGrant(name="g", server="s", user_name="u", database="d", privileges=["GRANT OPTION"]), "privileges"),
        (MySQLGrant(name="g", server="s", user_name="u", database="d", privileges=[]), "privileges"),
    ],
)
def test_names_and_privileges_a_server_would_misread_are_refused_naming_the_field(row: MySQLGrant, field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        MySQLGrantController().validate(row)
    assert refused.value.field == field


def test_credentials_refused_are_permanent_until_the_secret_changes(
    stack: dict[str, str], engine: Engine, mysql_clean: str
) -> None:
    unique = mysql_clean
    srv, db, wrong = f"{unique}-srv", f"{unique}-db", f"wrong-{uuid.uuid4().hex}"
    _secret(engine, srv, f"mysql://root:{wrong}@127.0.0.1:3306/")
    _insert(engine, "MySQLDatabase", name=db, server=srv, interval_seconds=1)
    row = wait_for(lambda: _phase(engine, db, "MySQLDatabase", "Failed"), 20, "refused")
    message = _ready_message(row)
    assert "AccessDenied" in str(row["conditions"]) and "Access denied" in message and "will retry" not in message
    assert row["next_reconcile_at"] is None  # not retried: nothing changes until the row or the secret does
    assert wrong not in _everything_written(engine, unique)
    _secret(engine, srv, ROOT_URL)
    wait_for(lambda: ready_at(engine, db, 1, "MySQLDatabase"), 20, "ready once the secret is right")
