"""Secrets over the REST API and the CLI, on real PostgreSQL: written, listed and deleted, never read back.

The API here logs in as a user granted `setpoint_api` alone, as a deployment does: that role may write a value
but not select it, so every answer is built from the name, the digest and the times.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql as pgsql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from api.app import create_app
from models.database import libpq_url, make_engine
from setpoint.settings import Settings
from tests.helpers import sql
from tests.test_cli import setpoint

TOKEN = "api-token-for-secret-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api_url(database_url: str) -> Iterator[str]:
    """The database URL of a fresh LOGIN user that is a member of setpoint_api and nothing else."""
    user, password = f"setpoint_api_secrets_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE setpoint_api").format(
                pgsql.Identifier(user), pgsql.Literal(password)
            )
        )
    try:
        yield make_url(database_url).set(username=user, password=password).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(user)))


@pytest.fixture(scope="module")
def client(api_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=api_url, api_token=TOKEN)), headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def cli_env(database_url: str) -> dict[str, str]:
    """The CLI's environment: the admin's database URL, nothing else of Setpoint's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    return {**env, "SETPOINT_DATABASE_URL": database_url}


@pytest.fixture(scope="module")
def api_engine(api_url: str) -> Iterator[Engine]:
    engine = make_engine(api_url)
    yield engine
    engine.dispose()


def stored(engine: Engine, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM secrets WHERE name = :n"), {"n": name}).mappings().first()
    return dict(row) if row else None


def locations(answer: Any) -> list[list[Any]]:
    assert answer.status_code == 422, answer.text
    return [error["loc"] for error in answer.json()["detail"]]


def test_put_creates_then_changes_and_no_answer_holds_the_value(
    client: TestClient, engine: Engine, unique: str
) -> None:
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    created = client.put(f"/v1/secrets/{unique}", json={"value": first})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/v1/secrets/{unique}"
    body = created.json()
    assert {"name": body["name"], "set": body["set"]} == {"name": unique, "set": True}
    assert body["digest"].startswith("sha256:") and body["created_at"] == body["updated_at"]
    assert stored(engine, unique)["value"] == first

    again = client.put(f"/v1/secrets/{unique}", json={"value": first})
    assert again.status_code == 200 and again.json() == body  # the same value: nothing moved

    changed = client.put(f"/v1/secrets/{unique}", json={"value": second})
    assert changed.status_code == 200
    assert changed.json()["digest"] != body["digest"] and changed.json()["updated_at"] > body["updated_at"]
    assert changed.json()["created_at"] == body["created_at"]
    assert stored(engine, unique)["value"] == second

    read = client.get(f"/v1/secrets/{unique}")
    listed = client.get("/v1/secrets", params={"prefix": unique})
    assert read.json() == changed.json() and listed.json()["items"] == [changed.json()]
    for answer in (created, again, changed, read, listed):
        assert first not in answer.text and second not in answer.text and "value" not in answer.json()


def test_delete_is_204_then_404(client: TestClient, engine: Engine, unique: str) -> None:
    assert client.put(f"/v1/secrets/{unique}", json={"value": "to-be-deleted"}).status_code == 201
    assert client.delete(f"/v1/secrets/{unique}").status_code == 204
    assert stored(engine, unique) is None
    assert client.get(f"/v1/secrets/{unique}").status_code == 404
    assert client.delete(f"/v1/secrets/{unique}").status_code == 404


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"value": ""}, ["body", "value"]),
        ({}, ["body", "value"]),
        ({"value": 42}, ["body", "value"]),
        ({"value": "nul\x00inside"}, ["body", "value"]),
        ('{"value": "lone \\ud800 surrogate"}', ["body", "value"]),  # JSON may escape what UTF-8 cannot hold
        ({"value": "é" * 40_000}, ["body", "value"]),  # 40,000 characters, 80,000 bytes: over 64 KiB
        ({"value": "ok", "extra": "x"}, ["body", "extra"]),
    ],
)
def test_a_bad_value_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, engine: Engine, unique: str, body: dict[str, Any] | str, where: list[str]
) -> None:
    if isinstance(body, str):
        answer = client.put(f"/v1/secrets/{unique}", content=body, headers={"Content-Type": "application/json"})
    else:
        answer = client.put(f"/v1/secrets/{unique}", json=body)
    assert where in locations(answer)
    assert stored(engine, unique) is None
    if isinstance(body, dict) and isinstance(body.get("value"), str) and body["value"]:
        assert body["value"][:20] not in answer.text  # the refusal does not quote what it refused


@pytest.mark.parametrize("name", ["Upper", "bad name", "semi;colon", "-leading", "x" * 254, "quote'd"])
def test_a_bad_name_is_422_naming_the_path(client: TestClient, name: str) -> None:
    assert ["path", "name"] in locations(client.put(f"/v1/secrets/{name}", json={"value": "v"}))


def test_secrets_need_the_token(api_url: str) -> None:
    with TestClient(create_app(Settings(database_url=api_url, api_token=TOKEN))) as anonymous:
        for method, path in (("GET", "/v1/secrets"), ("GET", "/v1/secrets/x"), ("PUT", "/v1/secrets/x")):
            assert anonymous.request(method, path, json={"value": "v"}).status_code == 401, (method, path)


def test_the_api_role_may_write_a_value_but_never_read_one(api_engine: Engine, engine: Engine, unique: str) -> None:
    sql(engine, "INSERT INTO secrets (name, value) VALUES (:n, 'the-value')", n=unique)
    with pytest.raises(ProgrammingError) as refused:
        sql(api_engine, "SELECT value FROM secrets WHERE name = :n", n=unique)
    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)
    with pytest.raises(ProgrammingError) as upsert:
        sql(
            api_engine,
            "INSERT INTO secrets (name, value) VALUES (:n, 'x') "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            n=unique,
        )
    assert isinstance(upsert.value.orig, psycopg.errors.InsufficientPrivilege)
    assert stored(engine, unique)["value"] == "the-value"


def test_concurrent_puts_of_a_new_secret_all_land(client: TestClient, engine: Engine, unique: str) -> None:
    """UPDATE then INSERT races: the loser of the INSERT retries as an UPDATE instead of failing."""
    codes: list[int] = []
    start = threading.Barrier(8)

    def put(i: int) -> None:
        start.wait()
        codes.append(client.put(f"/v1/secrets/{unique}", json={"value": f"value-{i}"}).status_code)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [200] * 7 + [201]
    assert stored(engine, unique)["value"] in {f"value-{i}" for i in range(8)}


def test_the_cli_sets_from_stdin_a_file_or_a_variable_and_never_prints_a_value(
    cli_env: dict[str, str], engine: Engine, unique: str, tmp_path: Any
) -> None:
    value = f"cli-{uuid.uuid4().hex}"
    done = setpoint(cli_env, "secret", "set", unique, stdin=value + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"secret/{unique} created (sha256:")
    assert stored(engine, unique)["value"] == value  # echo's newline dropped
    assert "unchanged" in setpoint(cli_env, "secret", "set", unique, stdin=value).stdout

    from_file = tmp_path / "value"
    from_file.write_text(value + "-file\n")
    assert "updated" in setpoint(cli_env, "secret", "set", unique, "--from-file", str(from_file)).stdout
    assert stored(engine, unique)["value"] == value + "-file"
    env = {**cli_env, "SECRET_FOR_TEST": value + "-env"}
    assert setpoint(env, "secret", "set", unique, "--from-env", "SECRET_FOR_TEST").returncode == 0
    assert stored(engine, unique)["value"] == value + "-env"

    table = setpoint(cli_env, "secret", "list")
    listed = json.loads(setpoint(cli_env, "secret", "list", "-o", "json").stdout)
    mine = [s for s in listed if s["name"] == unique]
    assert mine and mine[0]["set"] is True and mine[0]["digest"] == stored(engine, unique)["digest"]
    assert unique in table.stdout and mine[0]["digest"] in table.stdout
    assert "NAME" in table.stdout and "DIGEST" in table.stdout and "UPDATED" in table.stdout
    assert value not in table.stdout + table.stderr + json.dumps(listed)

    short = setpoint(cli_env, "secret", "set", unique, stdin="xyz")
    assert short.returncode == 0 and "not masked" in short.stderr and "xyz" not in short.stdout
    assert setpoint(cli_env, "secret", "delete", unique).stdout.strip() == f"secret/{unique} deleted"
    assert stored(engine, unique) is None
    gone = setpoint(cli_env, "secret", "delete", unique)
    assert gone.returncode == 1 and "not found" in gone.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["Bad Name"], "v", "not valid"),
        ([], "", "empty"),
        ([], "\n", "empty"),
        (["--from-env", "SETPOINT_NO_SUCH_VARIABLE"], None, "not set"),
        (["--from-file", "/nonexistent/setpoint-secret"], None, "cannot read"),
        (["--from-file", "/etc/hostname", "--from-env", "HOME"], None, "not both"),
    ],
)
def test_the_cli_refuses_a_bad_name_or_an_empty_value_with_exit_code_2(
    cli_env: dict[str, str], engine: Engine, unique: str, args: list[str], stdin: str | None, says: str
) -> None:
    name = args.pop(0) if args and not args[0].startswith("-") else unique
    done = setpoint(cli_env, "secret", "set", name, *args, stdin=stdin)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert stored(engine, unique) is None


def test_the_cli_takes_no_value_as_an_argument(cli_env: dict[str, str], unique: str) -> None:
    done = setpoint(cli_env, "secret", "set", unique, "the-value-on-the-command-line", stdin="")
    assert done.returncode == 2 and "the-value-on-the-command-line" not in done.stdout
