"""PostgreSQL roles, databases and grants kept on the machine's real server (the one the tests' Setpoint database
lives on), from SQL rows, by the shared real stack: created, put back after changes by hand, rotated, removed,
and never anything but the intended object, whatever its name. Every resource has a 300 s interval, so only a
look asked for (`next_reconcile_at = now()`) or an event (a secret changed) explains speed."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from controllers import postgres_grant, postgres_role
from models.database import libpq_url
from models.postgres import DATABASE_PRIVILEGES, TABLE_PRIVILEGES, PostgresRole
from setpoint.errors import InvalidSpec
from tests.conftest import wait_for
from tests.helpers import ready_at, runs, sql, status

SLOW = 300


class Server:
    """The real PostgreSQL as its admin sees it, and what a test made there (dropped at the end, whatever happened)."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.conn = psycopg.connect(libpq_url(admin), autocommit=True)
        self.roles: list[str] = []
        self.databases: list[str] = []

    def url(self, password: str) -> str:
        """The server's URL as a secret holds it: with a password (trust ignores it), so it is never shown."""
        return make_url(self.admin).set(password=password).render_as_string(hide_password=False)

    def role(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT r.rolcanlogin AS login, r.rolconnlimit AS connection_limit, a.rolpassword AS stored,"
            " r.rolcreatedb AS createdb FROM pg_roles AS r JOIN pg_authid AS a ON a.oid = r.oid WHERE r.rolname = %s",
            (name,),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("login", "connection_limit", "stored", "createdb"), row, strict=True))

    def database(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), oid::bigint FROM pg_database "
            "WHERE datname = %s",
            (name,),
        ).fetchone()
        return {"owner": row[0], "encoding": row[1], "oid": row[2]} if row else None

    def database_privileges(self, role: str, database: str) -> set[str]:
        rows = self.conn.execute(
            "SELECT a.privilege_type FROM pg_database AS d, aclexplode(d.datacl) AS a "
            "WHERE d.datname = %s AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (database, role),
        ).fetchall()
        return {r[0] for r in rows}

    def member_of(self, role: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT p.rolname FROM pg_auth_members AS m JOIN pg_roles AS p ON p.oid = m.roleid "
            "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = %s) ORDER BY 1",
            (role,),
        )
        return [r[0] for r in rows]

    def roles_like(self, pattern: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (pattern,))]

    def close(self) -> None:
        for database in self.databases:
            self.conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(database)))
        for role in self.roles:
            if self.role(role):
                self.conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(role)))
            self.conn.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(role)))
        self.conn.close()


@pytest.fixture
def server(servers: tuple[str, str], engine: Engine, unique: str) -> Iterator[Server]:
    """The server; afterwards, this test's rows (named after `unique`) are deleted and what it made there dropped."""
    made = Server(servers[0])
    try:
        yield made
    finally:
        with engine.connect() as conn:  # shown by pytest if the test failed
            for table in ("statuses", "runs"):
                for row in conn.execute(text(f"SELECT * FROM {table} WHERE name LIKE :p ORDER BY 1, 2"),
                                        {"p": f"{unique}%"}).mappings():  # fmt: skip
                    print(table, dict(row))
        for table in ("postgres_grants", "postgres_databases", "postgres_roles"):
            sql(engine, f"UPDATE {table} SET deletion_policy = 'orphan' WHERE name LIKE :p", p=f"{unique}%")
            sql(engine, f"DELETE FROM {table} WHERE name LIKE :p", p=f"{unique}%")
        sql(engine, "DELETE FROM secrets WHERE name LIKE :p", p=f"{unique}%")
        made.close()


def _secret(engine: Engine, name: str, value: str) -> None:
    sql(engine, "INSERT INTO secrets (name, value) VALUES (:n, :v)", n=name, v=value)


def _insert(engine: Engine, table: str, name: str, **columns: Any) -> None:
    names = "".join(f", {column}" for column in columns)
    values = "".join(f", :{column}" for column in columns)
    sql(engine, f"INSERT INTO {table} (name, interval_seconds{names}) VALUES (:n, {SLOW}{values})", n=name, **columns)


def _look(engine: Engine, kind: str, name: str) -> None:
    """Make the resource due now, as the interval would (a change by hand sends no event)."""
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE kind = :k AND name = :n", k=kind, n=name)


def _scram_verifies(stored: str, password: str) -> bool:
    """RFC 5802 written out again here, apart from the controller's: is `stored` the verifier of `password`?"""
    _, iterations_salt, keys = stored.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, _ = keys.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


def _password_is(server: Server, role: str, password: str) -> bool:
    found = server.role(role)
    return bool(found and found["stored"] and _scram_verifies(found["stored"], password))


def _no_secret_anywhere(engine: Engine, kind: str, name: str, values: list[str]) -> None:
    written = json.dumps([status(engine, name, kind), runs(engine, name, kind)], default=str)
    for value in values:
        assert value not in written, f"a secret value appears in the status or runs of {kind}/{name}"


def _ready(engine: Engine, kind: str, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        generation = conn.execute(
            text("SELECT generation FROM statuses WHERE kind = :k AND name = :n"), {"k": kind, "n": name}
        ).scalar()
    return ready_at(engine, name, generation or 1, kind)


def test_a_role_is_created_put_back_after_changes_by_hand_rotated_and_dropped(
    stack: dict[str, str], engine: Engine, server: Server, unique: str
) -> None:
    parent = f"{unique}-readers"
    server.roles += [unique, parent]
    server.conn.execute(pgsql.SQL("CREATE ROLE {}").format(pgsql.Identifier(parent)))
    url_password, first, second = (f"pw-{uuid.uuid4().hex}" for _ in range(3))
    _secret(engine, f"{unique}-server", server.url(url_password))
    _secret(engine, f"{unique}-password", first)
    _insert(
        engine, "postgres_roles", unique, server=f"{unique}-server", password=f"{unique}-password", login=True,
        connection_limit=3, member_of=[parent], valid_until="2031-01-01T00:00:00+00:00",
    )  # fmt: skip
    row = wait_for(lambda: _ready(engine, "PostgresRole", unique), 20, "role ready")
    assert row["outputs"] == {"name": unique}
    made = server.role(unique)
    assert made is not None and made["login"] and made["connection_limit"] == 3 and not made["createdb"]
    assert server.member_of(unique) == [parent]
    assert server.conn.execute("SELECT rolvaliduntil = '2031-01-01Z' FROM pg_roles WHERE rolname = %s",
                               (unique,)).fetchone() == (True,)  # fmt: skip
    assert row["drift"] == []  # as observed after its actions: nothing left to do
    assert _password_is(server, unique, first)
    with psycopg.connect(libpq_url(server.admin), user=unique, password=first) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (unique,)

    server.conn.execute(pgsql.SQL("ALTER ROLE {} NOLOGIN").format(pgsql.Identifier(unique)))
    server.conn.execute(pgsql.SQL("REVOKE {} FROM {}").format(pgsql.Identifier(parent), pgsql.Identifier(unique)))
    _look(engine, "PostgresRole", unique)
    wait_for(lambda: (server.role(unique) or {}).get("login"), 20, "LOGIN put back")
    wait_for(lambda: server.member_of(unique) == [parent], 20, "membership put back")
    put_back = wait_for(lambda: [a for r in runs(engine, unique, "PostgresRole") for a in r["actions"]
                                 if a.startswith("alter role")], 20, "the run recorded")  # fmt: skip
    assert put_back == [f"alter role {unique}: login: False -> True"]

    server.conn.execute(pgsql.SQL("ALTER ROLE {} PASSWORD 'changed-by-hand'").format(pgsql.Identifier(unique)))
    assert not _password_is(server, unique, first)
    _look(engine, "PostgresRole", unique)
    wait_for(lambda: _password_is(server, unique, first), 20, "the password put back")

    rotated = time.monotonic()
    sql(engine, "UPDATE secrets SET value = :v WHERE name = :n", v=second, n=f"{unique}-password")
    wait_for(lambda: _password_is(server, unique, second), 20, "the rotated password applied")
    print(f"secret rotated -> role's password changed: {(time.monotonic() - rotated) * 1000:.0f} ms")
    with psycopg.connect(libpq_url(server.admin), user=unique, password=second) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (unique,)

    _no_secret_anywhere(engine, "PostgresRole", unique, [url_password, first, second])
    sql(engine, "DELETE FROM postgres_roles WHERE name = :n", n=unique)
    wait_for(lambda: server.role(unique) is None, 20, "role dropped")
    wait_for(lambda: status(engine, unique, "PostgresRole") is None, 20, "tombstone gone")


def test_a_password_check_recomputes_the_servers_scram_verifier() -> None:
    """Pure: the controller's comparison of a stored verifier (as libpq makes it) with a password."""
    with psycopg.connect("dbname=postgres host=127.0.0.1 user=postgres") as conn:
        stored = conn.pgconn.encrypt_password("s3cret \u00a0x".encode(), b"app", b"scram-sha-256").decode()
    assert postgres_role.verifies(stored, "s3cret \u00a0x", "app")
    assert not postgres_role.verifies(stored, "s3cret x2", "app")
    md5 = "md5" + hashlib.md5(b"pwapp").hexdigest()
    assert postgres_role.verifies(md5, "pw", "app") and not postgres_role.verifies(md5, "px", "app")


def test_a_role_plan_names_what_differs_and_never_a_password_or_the_servers_url() -> None:
    """Pure: plan against observed states (secrets are read only for the actions' values, so none are needed here
    when nothing is to be done)."""
    desired = PostgresRole(name="app", server="srv", login=True, connection_limit=5)
    drifted = postgres_role.RoleState(exists=True, login=False, connection_limit=5)
    assert postgres_role.attribute_drift(desired, drifted) == ["login: False -> True"]
    assert postgres_role.attribute_drift(desired, dataclasses.replace(drifted, login=True)) == []
    set_password = postgres_role.SetPassword(
        postgres_role.Redacted("postgresql://u:hunter22@h/db"), "app", postgres_role.Redacted("hunter33")
    )
    shown = str(set_password) + repr(set_password)
    assert "hunter" not in shown and str(set_password) == "set the password of role app"


def test_grant_privileges_outside_the_allow_lists_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpec, match=r"^table_privileges: 'ALL' is not one of SELECT"):
        postgres_grant.privileges("table_privileges", ["select", "ALL"], TABLE_PRIVILEGES)
    assert postgres_grant.privileges("privileges", ["connect", "temp"], DATABASE_PRIVILEGES) == (
        "CONNECT", "TEMPORARY",
    )  # fmt: skip


def _extensions(server: Server, database: str) -> list[str]:
    url = make_url(server.admin).set(database=database).render_as_string(hide_password=False)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT extname FROM pg_extension ORDER BY 1")]


def _ready_says(engine: Engine, kind: str, name: str, says: str) -> dict[str, Any] | None:
    row = _ready(engine, kind, name)
    ready = next((c for c in (row or {}).get("conditions", []) if c["type"] == "Ready"), {})
    return row if row and says in ready.get("message", "") else None


def test_a_database_is_created_for_its_owner_put_back_when_dropped_by_hand_and_orphaned_on_delete(
    stack: dict[str, str], engine: Engine, server: Server, unique: str
) -> None:
    owner, database = f"{unique}-owner", f"{unique}-db"
    server.roles.append(owner)
    server.databases.append(database)
    url_password = f"pw-{uuid.uuid4().hex}"
    _secret(engine, f"{unique}-server", server.url(url_password))
    _insert(engine, "postgres_roles", owner, server=f"{unique}-server")
    _insert(engine, "postgres_databases", database, server=f"{unique}-server", owner=owner, extensions=["citext"])
    with engine.connect() as conn:
        policy, depends_on = conn.execute(
            text("SELECT deletion_policy, depends_on FROM postgres_databases WHERE name = :n"), {"n": database}
        ).one()
    assert policy == "orphan" and depends_on == [f"PostgresRole/{owner}"]  # its owner is a Setpoint resource
    row = wait_for(lambda: _ready(engine, "PostgresDatabase", database), 30, "database ready")
    assert server.database(database) == {"owner": owner, "encoding": "UTF8", "oid": row["outputs"]["oid"]}
    assert "citext" in _extensions(server, database)
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"  # no password, though the secret's URL has one
    assert row["outputs"] == {"name": database, "url": url, "oid": row["outputs"]["oid"]}

    server.conn.execute(pgsql.SQL("DROP DATABASE {}").format(pgsql.Identifier(database)))  # no session of ours holds it
    _look(engine, "PostgresDatabase", database)
    try:
        row = wait_for(
            lambda: _ready_says(engine, "PostgresDatabase", database, "its data is lost"), 20, "created again"
        )
    except AssertionError:
        print(status(engine, database, "PostgresDatabase"), runs(engine, database, "PostgresDatabase"))
        raise
    assert server.database(database) is not None and "citext" in _extensions(server, database)
    ready = next(c for c in row["conditions"] if c["type"] == "Ready")
    assert "dropped outside Setpoint" in ready["message"], ready
    _no_secret_anywhere(engine, "PostgresDatabase", database, [url_password])

    sql(engine, "DELETE FROM postgres_databases WHERE name = :n", n=database)
    wait_for(lambda: status(engine, database, "PostgresDatabase") is None, 20, "forgotten")
    assert server.database(database) is not None  # orphaned: its data stays

    # Its owner cannot be dropped while it owns the database: a permanent failure naming what blocks it.
    sql(engine, "DELETE FROM postgres_roles WHERE name = :n", n=owner)
    failed = wait_for(lambda: _refused(engine, "PostgresRole", owner), 20, "role's teardown refused")
    assert failed["last_error"].startswith(f"role '{owner}' cannot be dropped: owner of database {database}")
    assert "Traceback" not in failed["last_error"] and server.role(owner) is not None
    assert failed["next_reconcile_at"] is None  # permanent: not retried until asked
    server.conn.execute(pgsql.SQL("DROP DATABASE {}").format(pgsql.Identifier(database)))
    _look(engine, "PostgresRole", owner)
    wait_for(lambda: server.role(owner) is None, 20, "role dropped once nothing blocks it")


def _failed(engine: Engine, kind: str, name: str) -> dict[str, Any] | None:
    row = status(engine, name, kind)
    return row if row and row["phase"] == "Failed" else None


def _refused(engine: Engine, kind: str, name: str) -> dict[str, Any] | None:
    """The tombstone of a resource whose teardown failed (its phase stays Deleting)."""
    row = status(engine, name, kind)
    return row if row and row["phase"] == "Deleting" and row["last_error"] else None


def test_a_database_whose_row_says_delete_is_dropped(
    stack: dict[str, str], engine: Engine, server: Server, unique: str
) -> None:
    database = f"{unique}-db"
    server.databases.append(database)
    _secret(engine, f"{unique}-server", server.url("x-unused"))
    _insert(engine, "postgres_databases", database, server=f"{unique}-server", deletion_policy="delete")
    wait_for(lambda: _ready(engine, "PostgresDatabase", database), 30, "database ready")
    assert server.database(database) is not None
    sql(engine, "DELETE FROM postgres_databases WHERE name = :n", n=database)
    wait_for(lambda: server.database(database) is None, 20, "database dropped")


def _table_privileges(server: Server, database: str, table: str, role: str) -> set[str]:
    url = make_url(server.admin).set(database=database).render_as_string(hide_password=False)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT a.privilege_type FROM pg_class AS c, aclexplode(c.relacl) AS a "
            "WHERE c.oid = %s::regclass AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (table, role),
        ).fetchall()
    return {r[0] for r in rows}


def _in_database(server: Server, database: str, statement: pgsql.Composable) -> None:
    url = make_url(server.admin).set(database=database).render_as_string(hide_password=False)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(statement)


def test_a_grant_is_kept_put_back_after_a_revoke_and_revokes_exactly_its_own_on_delete(
    stack: dict[str, str], engine: Engine, server: Server, unique: str
) -> None:
    role, other, database, grant = f"{unique}-app", f"{unique}-other", f"{unique}-db", f"{unique}-grant"
    server.roles += [role, other]
    server.databases.append(database)
    url_password = f"pw-{uuid.uuid4().hex}"
    _secret(engine, f"{unique}-server", server.url(url_password))
    _insert(engine, "postgres_roles", role, server=f"{unique}-server", login=True)
    _insert(engine, "postgres_databases", database, server=f"{unique}-server", deletion_policy="delete")
    wait_for(lambda: _ready(engine, "PostgresDatabase", database), 30, "database ready")
    _in_database(server, database, pgsql.SQL("CREATE TABLE orders (id int)"))
    server.conn.execute(pgsql.SQL("CREATE ROLE {}").format(pgsql.Identifier(other)))
    server.conn.execute(
        pgsql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(*map(pgsql.Identifier, (database, other)))
    )
    _insert(
        engine, "postgres_grants", grant, server=f"{unique}-server", role=role, database=database,
        privileges=["connect", "TEMPORARY"], schema_name="public", table_privileges=["SELECT"],
    )  # fmt: skip
    wait_for(lambda: _ready(engine, "PostgresGrant", grant), 30, "grant ready")
    assert server.database_privileges(role, database) == {"CONNECT", "TEMPORARY"}
    assert _table_privileges(server, database, "public.orders", role) == {"SELECT"}
    _in_database(server, database, pgsql.SQL("CREATE TABLE later (id int)"))  # by the server's user: defaults apply
    assert _table_privileges(server, database, "public.later", role) == {"SELECT"}

    server.conn.execute(pgsql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(
        *map(pgsql.Identifier, (database, role))))  # fmt: skip
    _in_database(server, database, pgsql.SQL("REVOKE SELECT ON orders FROM {}").format(pgsql.Identifier(role)))
    _look(engine, "PostgresGrant", grant)
    wait_for(lambda: server.database_privileges(role, database) == {"CONNECT", "TEMPORARY"}, 20, "CONNECT put back")
    wait_for(lambda: _table_privileges(server, database, "public.orders", role) == {"SELECT"}, 20, "SELECT put back")

    _no_secret_anywhere(engine, "PostgresGrant", grant, [url_password])
    sql(engine, "DELETE FROM postgres_grants WHERE name = :n", n=grant)
    wait_for(lambda: server.database_privileges(role, database) == set(), 20, "grant revoked")
    wait_for(lambda: status(engine, grant, "PostgresGrant") is None, 20, "grant torn down")
    assert _table_privileges(server, database, "public.orders", role) == set()
    assert _table_privileges(server, database, "public.later", role) == set()
    assert server.database_privileges(other, database) == {"CREATE"}  # what the row did not grant stays

    sql(engine, "DELETE FROM postgres_roles WHERE name = :n", n=role)
    wait_for(lambda: server.role(role) is None, 20, "role dropped: the grant left nothing behind")


def test_a_server_that_is_down_is_named_and_retried_and_holds_no_one_else_up(
    stack: dict[str, str], engine: Engine, server: Server, unique: str
) -> None:
    down, up = f"{unique}-down", f"{unique}-up"
    server.roles += [down, up]
    password = f"pw-{uuid.uuid4().hex}"
    closed = make_url(server.admin).set(port=1, password=password).render_as_string(hide_password=False)
    _secret(engine, f"{unique}-closed", closed)
    _secret(engine, f"{unique}-server", server.url(password))
    _insert(engine, "postgres_roles", down, server=f"{unique}-closed")
    _insert(engine, "postgres_roles", up, server=f"{unique}-server")
    wait_for(lambda: _ready(engine, "PostgresRole", up), 20, "the role on a live server ready")
    row = wait_for(lambda: _failed(engine, "PostgresRole", down), 20, "the role on a closed port failed")
    ready = next(c for c in row["conditions"] if c["type"] == "Ready")
    assert "will retry" in ready["message"] and "postgresql://postgres:***@127.0.0.1:1/" in ready["message"], ready
    assert row["next_reconcile_at"] is not None  # transient: retried with backoff
    _no_secret_anywhere(engine, "PostgresRole", down, [password])

    sql(engine, "UPDATE secrets SET value = :v WHERE name = :n", v=server.url(password), n=f"{unique}-closed")
    wait_for(lambda: _ready(engine, "PostgresRole", down), 20, "converged once its server answers")
    assert server.role(down) is not None


def test_hostile_names_are_quoted_or_refused_and_nothing_else_is_touched(
    stack: dict[str, str], engine: Engine, server: Server, unique: str
) -> None:
    victim = f"{unique}-victim"
    hostile_role = f'{unique}"; DROP ROLE "{victim}"; --'
    hostile_database = f"{unique} db'; DROP DATABASE postgres; --"
    server.roles += [victim, hostile_role]
    server.databases.append(hostile_database)
    server.conn.execute(pgsql.SQL("CREATE ROLE {}").format(pgsql.Identifier(victim)))
    _secret(engine, f"{unique}-server", server.url("x-unused"))
    _insert(engine, "postgres_roles", f"{unique}-role", server=f"{unique}-server", external_name=hostile_role)
    _insert(
        engine, "postgres_databases", f"{unique}-db", server=f"{unique}-server", external_name=hostile_database,
        deletion_policy="delete",
    )  # fmt: skip
    # Deleted at once with their grants below, they wait for the grants' teardown; a wake-up that lands while
    # their own reconcile is starting can be missed (worker/store.py reads dependents before the grant's commit
    # shows), so the interval is their safety net here.
    sql(engine, "UPDATE postgres_roles SET interval_seconds = 1 WHERE name = :n", n=f"{unique}-role")
    sql(engine, "UPDATE postgres_databases SET interval_seconds = 1 WHERE name = :n", n=f"{unique}-db")
    _insert(
        engine, "postgres_grants", f"{unique}-grant", server=f"{unique}-server", role=hostile_role,
        database=hostile_database, privileges=["CONNECT"],
    )  # fmt: skip
    _insert(
        engine, "postgres_grants", f"{unique}-bad", server=f"{unique}-server", role=hostile_role,
        database=hostile_database, privileges=["CONNECT; DROP ROLE x"],
    )  # fmt: skip
    wait_for(lambda: _ready(engine, "PostgresGrant", f"{unique}-grant"), 30, "the grant between hostile names ready")
    assert set(server.roles_like(f"{unique}%")) == {victim, hostile_role}
    assert server.database(hostile_database) is not None and server.database("postgres") is not None
    assert server.database_privileges(hostile_role, hostile_database) == {"CONNECT"}
    bad = wait_for(lambda: (status(engine, f"{unique}-bad", "PostgresGrant") or {}).get("phase") == "Invalid"
                   and status(engine, f"{unique}-bad", "PostgresGrant"), 20, "bad privileges refused")  # fmt: skip
    assert bad["last_error"].startswith("privileges: 'CONNECT; DROP ROLE X' is not one of CONNECT, CREATE, TEMPORARY")

    sql(engine, "DELETE FROM postgres_grants WHERE name LIKE :p", p=f"{unique}%")
    sql(engine, "DELETE FROM postgres_databases WHERE name = :n", n=f"{unique}-db")
    sql(engine, "DELETE FROM postgres_roles WHERE name = :n", n=f"{unique}-role")
    try:
        wait_for(lambda: server.role(hostile_role) is None, 30, "the hostile-named role dropped")
        wait_for(lambda: server.database(hostile_database) is None, 30, "the hostile-named database dropped")
    except AssertionError:
        for kind, name in (
            ("PostgresRole", "-role"),
            ("PostgresGrant", "-grant"),
            ("PostgresGrant", "-bad"),
            ("PostgresDatabase", "-db"),
        ):
            print(kind, name, status(engine, unique + name, kind), runs(engine, unique + name, kind))
        raise
    wait_for(lambda: server.database(hostile_database) is None, 30, "the hostile-named database dropped")
    assert server.role(victim) is not None and server.database("postgres") is not None


def test_many_roles_at_once_share_a_few_pooled_connections_to_their_server(
    stack: dict[str, str], engine: Engine, server: Server, unique: str
) -> None:
    count = 40
    tag = f"setpoint-pool-{unique}"  # how this test's connections are told apart on the server
    _secret(engine, unique, make_url(server.url("pw")).update_query_dict({"application_name": tag}).render_as_string(
        hide_password=False
    ))  # fmt: skip
    names = [f"{unique}-r{i:02d}" for i in range(count)]
    server.roles.extend(names)
    sql(
        engine,
        "INSERT INTO postgres_roles (name, server, interval_seconds) "
        f"SELECT n, :s, {SLOW} FROM unnest(CAST(:names AS text[])) AS n",
        s=unique,
        names=names,
    )
    most = 0

    def converged() -> bool:
        nonlocal most
        opened = server.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,))
        most = max(most, int(opened.fetchone()[0]))  # type: ignore[index]
        return sum(1 for name in names if server.role(name)) == count

    wait_for(converged, 60, f"{count} roles created")
    print(f"{count} roles reconciled at once: at most {most} connections to their server")
    assert 0 < most <= 2 * 4  # the test stack's two worker processes, each at most POOL_SIZE + MAX_OVERFLOW
