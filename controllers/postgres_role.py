"""The PostgresRole kind's controller: a role on a PostgreSQL server, its attributes, password and memberships.

Observed from pg_roles and pg_auth_members. A password changed out of band is detected by comparing what the
server stores: the SCRAM-SHA-256 verifier in pg_authid (readable by a superuser alone) is recomputed from the
desired password with the verifier's own salt and iteration count (RFC 5802/7677, as PostgreSQL's
scram_verify_plain_password does; an old `md5…` hash is compared too). Authenticating as the role would prove
nothing on servers that trust local connections, and needs no superuser. Where the server's user is not a
superuser, pg_authid cannot be read: the controller then authenticates as the role with the desired password
(a connection of its own, closed at once); a refusal means it differs. That is only as good as the server's
pg_hba.conf: where it trusts the connection, any password is accepted and a change by hand is not seen.

The password is never sent in clear: libpq computes the SCRAM verifier on the worker (as psql's \\password does),
so the server's statement log holds only the verifier. Deleting the row drops the role; one that still owns
objects or holds privileges is not dropped, and status names what blocks it (RoleInUse).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import stringprep
import unicodedata
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from controllers import postgres_server as server
from models.postgres import PostgresRole
from setpoint.errors import PermanentError
from worker import secrets
from worker.controller import Action, Controller
from worker.secrets import Redacted

ROLE = """
SELECT r.rolcanlogin, r.rolcreatedb, r.rolcreaterole, r.rolconnlimit,
       CASE WHEN r.rolvaliduntil = 'infinity' THEN NULL ELSE r.rolvaliduntil END AS valid_until,
       ARRAY(SELECT p.rolname::text FROM pg_auth_members AS m JOIN pg_roles AS p ON p.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1) AS member_of,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS can_read_passwords
FROM pg_roles AS r WHERE r.rolname = %s
"""


class RoleInUse(PermanentError):
    """The role owns objects or holds privileges, so PostgreSQL refuses to drop it."""


@dataclasses.dataclass(frozen=True)
class RoleState:
    """The role as the server has it; `password` says how the stored one compares with the desired one."""

    exists: bool
    login: bool = False
    createdb: bool = False
    createrole: bool = False
    connection_limit: int = -1
    valid_until: datetime | None = None
    member_of: tuple[str, ...] = ()
    password: str = "none"
    """'none' (no password stored), 'matches', 'differs', or 'unknown' (not a superuser: pg_authid unreadable)."""


def role_name(desired: PostgresRole) -> str:
    return desired.external_name or desired.name


def saslprep(password: str) -> str:
    """RFC 4013 as PostgreSQL applies it before hashing: a password it cannot prepare is used as it is."""
    mapped = "".join(" " if stringprep.in_table_c12(c) else "" if stringprep.in_table_b1(c) else c for c in password)
    prepared = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3, stringprep.in_table_c4,
        stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
        stringprep.in_table_c9, stringprep.in_table_a1,
    )  # fmt: skip
    if not prepared or any(test(c) for c in prepared for test in prohibited):
        return password
    return prepared


def verifies(stored: str, password: str, role: str) -> bool:
    """Whether `stored` (pg_authid.rolpassword) is the hash of `password` for `role`."""
    if stored.startswith("md5") and len(stored) == 35:
        return hmac.compare_digest(stored, "md5" + hashlib.md5((password + role).encode()).hexdigest())
    try:
        method, rest = stored.split("$", 1)
        iterations_salt, keys = rest.split("$", 1)
        iterations, salt = iterations_salt.split(":", 1)
        stored_key, server_key = keys.split(":", 1)
        if method != "SCRAM-SHA-256":
            return False
        salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key_now = hmac.new(salted, b"Server Key", "sha256").digest()
    return hmac.compare_digest(base64.b64encode(hashlib.sha256(client_key).digest()).decode(), stored_key) and (
        hmac.compare_digest(base64.b64encode(server_key_now).decode(), server_key)
    )


def authenticates(url: str, role: str, password: str) -> str:
    """'matches' if the server lets `role` in with `password`, 'differs' if it refuses it, else 'unknown'."""
    parsed = server.targets.parse(url)
    try:
        with psycopg.connect(
            host=parsed.host or "", port=parsed.port or 5432, dbname=parsed.database or "postgres", user=role,
            password=password, connect_timeout=server.targets.CONNECT_TIMEOUT_S,
        ):  # fmt: skip
            return "matches"
    except psycopg.OperationalError as error:
        refused = getattr(error, "sqlstate", None) == "28P01" or "password authentication failed" in str(error)
        return "differs" if refused else "unknown"


@dataclasses.dataclass(frozen=True)
class SetPassword(Action):
    """Store the role's password as a SCRAM verifier computed here (or remove it): the clear text never leaves."""

    server: Redacted
    role: str
    password: Redacted | None

    def run(self) -> None:
        with server.session(self.server.value) as raw:
            if self.password is None:
                raw.execute(sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(self.role)))
                return
            verifier = raw.pgconn.encrypt_password(self.password.value.encode(), self.role.encode(), b"scram-sha-256")
            raw.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(self.role), sql.Literal(verifier.decode()))
            )

    def __str__(self) -> str:
        done = "remove" if self.password is None else "set"
        return f"{done} the password of role {self.role}"


@dataclasses.dataclass(frozen=True)
class DropRole(Action):
    server: Redacted
    role: str

    def run(self) -> None:
        with server.session(self.server.value) as raw:
            try:
                raw.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.role)))
            except psycopg.errors.DependentObjectsStillExist as error:
                raise RoleInUse(
                    f"role {self.role!r} cannot be dropped: {server.detail(error) or server.first_line(error)}; "
                    "drop or reassign these (DROP OWNED BY, REASSIGN OWNED BY, or delete the Setpoint rows that "
                    "made them), then make it due again (UPDATE statuses SET next_reconcile_at = now() "
                    "WHERE kind = 'PostgresRole' AND name = …)"
                ) from None

    def __str__(self) -> str:
        return f"drop role {self.role}"


def attributes(desired: PostgresRole) -> sql.Composed:
    """The role's attributes as CREATE ROLE / ALTER ROLE options."""
    valid = desired.valid_until.isoformat() if desired.valid_until is not None else "infinity"
    return sql.SQL(" ").join(
        [
            sql.SQL("LOGIN" if desired.login else "NOLOGIN"),
            sql.SQL("CREATEDB" if desired.createdb else "NOCREATEDB"),
            sql.SQL("CREATEROLE" if desired.createrole else "NOCREATEROLE"),
            sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(desired.connection_limit)),
            sql.SQL("VALID UNTIL {}").format(sql.Literal(valid)),
        ]
    )


def attribute_drift(desired: PostgresRole, actual: RoleState) -> list[str]:
    """Which attributes differ, as `login: False -> True`."""
    pairs = {
        "login": (actual.login, desired.login),
        "createdb": (actual.createdb, desired.createdb),
        "createrole": (actual.createrole, desired.createrole),
        "connection_limit": (actual.connection_limit, desired.connection_limit),
        "valid_until": (actual.valid_until, desired.valid_until),
    }
    return [f"{key}: {was} -> {want}" for key, (was, want) in pairs.items() if was != want]


class PostgresRoleController(Controller[PostgresRole, RoleState]):
    model = PostgresRole

    def validate(self, desired: PostgresRole) -> None:
        server.check_name("external_name" if desired.external_name else "name", role_name(desired))
        for parent in desired.member_of:
            server.check_name("member_of", parent)

    def observe(self, desired: PostgresRole) -> RoleState:
        name = role_name(desired)
        url = secrets.value(desired.server)
        wanted = secrets.value(desired.password) if desired.password else None
        with server.session(url) as raw:
            row = raw.execute(ROLE, (name,)).fetchone()
            if row is None:
                return RoleState(exists=False)
            login, createdb, createrole, limit, valid_until, member_of, superuser = row
            password = "unknown"
            if not superuser and wanted is not None and login:
                password = authenticates(url, name, wanted)
            elif superuser:
                found = raw.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)).fetchone()
                stored = found[0] if found else None
                if stored is None:
                    password = "none"
                else:
                    password = "matches" if wanted is not None and verifies(stored, wanted, name) else "differs"
        return RoleState(True, login, createdb, createrole, limit, valid_until, tuple(member_of), password)

    def plan(self, desired: PostgresRole, actual: RoleState) -> list[Action]:
        name = role_name(desired)
        url = Redacted(secrets.value(desired.server))
        role = sql.Identifier(name)
        wanted = Redacted(secrets.value(desired.password)) if desired.password else None
        actions: list[Action] = []
        if not actual.exists:
            statement = sql.SQL("CREATE ROLE {} WITH {}").format(role, attributes(desired))
            actions.append(server.Execute(url, statement, f"create role {name}"))
            if wanted is not None:
                actions.append(SetPassword(url, name, wanted))
        else:
            drift = attribute_drift(desired, actual)
            if drift:
                statement = sql.SQL("ALTER ROLE {} WITH {}").format(role, attributes(desired))
                actions.append(server.Execute(url, statement, f"alter role {name}: {', '.join(drift)}"))
            if wanted is None and actual.password not in ("none", "unknown"):
                actions.append(SetPassword(url, name, None))
            elif wanted is not None and actual.password in ("none", "differs"):
                actions.append(SetPassword(url, name, wanted))
        for parent in sorted(set(desired.member_of) - set(actual.member_of)):
            statement = sql.SQL("GRANT {} TO {}").format(sql.Identifier(parent), role)
            actions.append(server.Execute(url, statement, f"grant role {parent} to {name}"))
        for parent in sorted(set(actual.member_of) - set(desired.member_of)):
            statement = sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(parent), role)
            actions.append(server.Execute(url, statement, f"revoke role {parent} from {name}"))
        return actions

    def teardown(self, desired: PostgresRole, actual: RoleState) -> list[Action]:
        if not actual.exists:
            return []
        return [DropRole(Redacted(secrets.value(desired.server)), role_name(desired))]

    def outputs(self, desired: PostgresRole, actual: RoleState) -> dict[str, Any]:
        return {"name": role_name(desired)}

    def describe(self, actual: RoleState) -> dict[str, Any]:
        described = dataclasses.asdict(actual)
        described["member_of"] = list(actual.member_of)
        if actual.valid_until is not None:
            described["valid_until"] = actual.valid_until.isoformat()
        if actual.password == "unknown":
            described["password"] = "unknown: pg_authid is unreadable and logging in as the role did not say"
        return described
