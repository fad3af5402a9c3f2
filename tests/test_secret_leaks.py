"""No secret value leaks: a workload gets its secret in its environment, and nothing else shows it.

On the shared real stack. After a succeeding reconcile, after failing ones whose messages would quote the
value (a replica that prints it and crash-loops, a command naming the secret that cannot start, a rollout
whose new replica dies saying it), and after a rotation, the known value is searched for in every status and
run row (as text), the desired rows, the replicas' records, the worker's and scheduler's logs, the REST API's
answers, the CLI's output and the task messages Flower shows (their arguments are the kind and the name).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pymysql
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.app import create_app
from resources import nodes
from setpoint.settings import Settings
from tests.conftest import replicas_of, wait_for
from tests.helpers import ready_at, sql, stack_log, status
from tests.test_cli import setpoint

LOOKS_LIKE_SECRET = "s3cr3t"


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(database_url=database_url, api_token=None), insecure_no_auth=True),
        base_url="http://localhost",
    ) as client:
        yield client


@pytest.fixture
def secret(engine: Engine, unique: str) -> Iterator[tuple[str, str]]:
    """(name, value) of a secret made for the test, deleted afterwards."""
    name, value = f"{unique}-db", f"{LOOKS_LIKE_SECRET}-{uuid.uuid4().hex}"
    sql(engine, "INSERT INTO secrets (name, value) VALUES (:n, :v)", n=name, v=value)
    yield name, value
    sql(engine, "DELETE FROM secrets WHERE name = :n", n=name)


def insert_workload(engine: Engine, name: str, command: str, env: dict[str, str], **extra: object) -> None:
    values = {"name": name, "command": command, "env": json.dumps(env), "replicas": 1, "interval_seconds": 2, **extra}
    columns = list(values)
    placeholders = ", ".join(f"CAST(:{c} AS jsonb)" if c == "env" else f":{c}" for c in columns)
    sql(engine, f"INSERT INTO workloads ({', '.join(columns)}) VALUES ({placeholders})", **values)


def replica_env(name: str) -> dict[str, str] | None:
    """The environment of the workload's one replica, as /proc shows it."""
    found = replicas_of(name)
    try:
        return found[0].environ() if len(found) == 1 else None
    except psutil.Error:
        return None


def leaks(
    stack: dict[str, str],
    engine: Engine,
    api: TestClient,
    name: str,
    secret: str,
    value: str,
    kind: str = "workload",
    plural: str | None = None,
) -> list[str]:
    """Every place outside the secrets table and the replicas' environments where `value` shows."""
    plural = plural or f"{kind}s"
    places: dict[str, str] = {}
    with engine.connect() as conn:
        for relation in ("statuses", "runs", "workloads", "files", "mysql_users", "dependencies"):
            found = conn.execute(
                text(f"SELECT string_agg(t::text, E'\\n') FROM {relation} AS t WHERE strpos(t::text, :v) > 0"),
                {"v": value},
            ).scalar()
            places[f"{relation} rows"] = found or ""
    for process in ("worker", "scheduler"):
        places[f"{process} log"] = stack_log(stack, process)
    records = Path(stack["SETPOINT_STATE_DIR"]) / "workloads" / name
    for record in records.glob("*.json*"):  # the replicas' records (their logs hold what replicas print)
        places[f"record {record.name}"] = record.read_text(errors="replace")
    for path in (f"/v1/{plural}/{name}", f"/v1/{plural}", f"/v1/secrets/{secret}", "/v1/secrets"):
        places[f"GET {path}"] = api.get(path).text
    for args in (
        ("get", kind, name, "-o", "json"),
        ("get", kind, name, "-o", "yaml"),
        ("get", kind),
        ("describe", kind, name),
        ("plan", kind, name),
        ("secret", "list"),
        ("secret", "list", "-o", "json"),
    ):
        done = setpoint(stack, *args)
        assert "Traceback" not in done.stderr, done.stderr
        places[f"setpoint {' '.join(args)}"] = done.stdout + done.stderr
    return [place for place, shown in places.items() if value in shown]


def condition(row: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return next((c for c in (row or {}).get("conditions") or [] if c["type"] == type_), {})


def test_a_workload_gets_its_secret_in_its_environment_and_nowhere_else(
    stack: dict[str, str], engine: Engine, api: TestClient, unique: str, secret: tuple[str, str]
) -> None:
    name, value = secret
    insert_workload(engine, unique, "sleep 300", {"DB_PASSWORD": f"{{{{ Secret/{name} }}}}"})
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "the workload ready")
    assert wait_for(lambda: replica_env(unique), 10, "its replica")["DB_PASSWORD"] == value
    shown = api.get(f"/v1/workloads/{unique}").json()
    assert shown["spec"]["env"] == {"DB_PASSWORD": f"{{{{ Secret/{name} }}}}"}  # what the user wrote
    assert f"Secret/{name}" in [d["ref"] for d in shown["status"]["dependencies"]]
    assert api.get(f"/v1/secrets/{name}").json()["used_by"] == [f"Workload/{unique}"]
    assert leaks(stack, engine, api, unique, name, value) == []


def test_task_messages_carry_the_kind_and_name_and_never_a_value(
    stack: dict[str, str], engine: Engine, unique: str, secret: tuple[str, str]
) -> None:
    """What Flower shows of a task (its args and kwargs) is what the message carries: read one still queued, for a
    node no worker serves, from the broker itself."""
    name, value = secret
    node, broker = f"{unique}-nowhere", redis.Redis.from_url(stack["SETPOINT_BROKER_URL"])
    queue = f"{stack['SETPOINT_QUEUE']}.node.{node}"
    sql(engine, "INSERT INTO nodes (name, started_at, last_seen_at) VALUES (:n, now(), now())", n=node)
    try:
        command = f"sleep 300 # {{{{ Secret/{name} }}}}"
        insert_workload(engine, unique, command, {"DB_PASSWORD": f"{{{{ Secret/{name} }}}}"}, node=node)
        raw = wait_for(lambda: broker.lrange(queue, 0, -1), 20, "the task queued for the node")
        message = json.loads(raw[0])
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args == ["Workload", unique] and set(kwargs) == {"claim"}
        assert unique in message["headers"]["argsrepr"]  # what Flower shows as the task's arguments
        assert all(value not in m.decode(errors="replace") for m in raw)
        assert value not in base64.b64decode(message["body"]).decode()
    finally:
        sql(engine, "DELETE FROM workloads WHERE name = :n", n=unique)
        nodes.forget(engine, broker, node, queue=queue, silent_s=60, force=True)
        broker.close()


@pytest.mark.parametrize(
    ("command", "says"),
    [
        # The replica prints its secret and exits: its crash loop's status quotes the log's last lines.
        ("sh -c 'echo \"connecting with password $DB_PASSWORD\"; exit 3'", "connecting with password ***"),
        # The command names the secret and cannot start: the shim's message quotes the command.
        ("/nonexistent/{{{{ Secret/{name} }}}}", "/nonexistent/***"),
    ],
)
def test_a_failing_workload_says_why_without_the_secret(
    stack: dict[str, str],
    engine: Engine,
    api: TestClient,
    unique: str,
    secret: tuple[str, str],
    command: str,
    says: str,
) -> None:
    name, value = secret
    insert_workload(engine, unique, command.format(name=name), {"DB_PASSWORD": f"{{{{ Secret/{name} }}}}"})

    def crashlooping() -> dict[str, Any] | None:
        row = status(engine, unique, "Workload")
        return row if condition(row, "Healthy").get("reason") == "CrashLoopBackOff" else None

    row = wait_for(crashlooping, 30, "a crash loop")
    assert says in condition(row, "Healthy")["message"], row["conditions"]
    assert leaks(stack, engine, api, unique, name, value) == []


def test_a_failed_rollout_records_its_error_without_the_secret(
    stack: dict[str, str], engine: Engine, api: TestClient, unique: str, secret: tuple[str, str]
) -> None:
    """The new replica dies at once saying the secret: the reconcile fails with its last words (last_error, the
    run's error, the Ready condition), the value masked."""
    name, value = secret
    insert_workload(engine, unique, "sleep 300", {"DB_PASSWORD": f"{{{{ Secret/{name} }}}}"})
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "the workload ready")
    failing = f"sh -c 'echo \"cannot log in as app with {{{{ Secret/{name} }}}}\"; exit 3'"
    sql(engine, "UPDATE workloads SET command = :c WHERE name = :n", c=failing, n=unique)

    def failed() -> dict[str, Any] | None:
        row = status(engine, unique, "Workload")
        return row if row and row["last_error"] and "exited at once" in row["last_error"] else None

    row = wait_for(failed, 30, "the rollout failing")
    assert "cannot log in as app with ***" in row["last_error"]
    with engine.connect() as conn:
        errors = (
            conn.execute(
                text("SELECT error FROM runs WHERE kind = 'Workload' AND name = :n AND error IS NOT NULL"),
                {"n": unique},
            )
            .scalars()
            .all()
        )
    assert any("cannot log in as app with ***" in e for e in errors), errors
    assert "***" in condition(row, "Ready").get("message", "") or "***" in condition(row, "Synced").get("message", "")
    assert wait_for(lambda: replica_env(unique), 10, "the old replica still running")["DB_PASSWORD"] == value
    assert leaks(stack, engine, api, unique, name, value) == []


def test_a_changed_secret_rolls_the_replicas_within_seconds(
    stack: dict[str, str], engine: Engine, api: TestClient, unique: str, secret: tuple[str, str]
) -> None:
    name, old = secret
    insert_workload(engine, unique, "sleep 300", {"DB_PASSWORD": f"{{{{ Secret/{name} }}}}"}, interval_seconds=3600)
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "the workload ready")
    before = wait_for(lambda: replicas_of(unique), 10, "its replica")[0].pid
    new = f"{LOOKS_LIKE_SECRET}-rotated-{uuid.uuid4().hex}"
    started = time.monotonic()
    assert api.put(f"/v1/secrets/{name}", json={"value": new}).status_code == 200
    rolled = wait_for(lambda: (e := replica_env(unique)) and e["DB_PASSWORD"] == new and e, 15, "the replica rolled")
    took = time.monotonic() - started
    print(f"rotation applied in {took:.2f}s")
    assert took < 10, took
    assert [p.pid for p in replicas_of(unique)] != [before] and rolled["SETPOINT_WORKLOAD"] == unique
    wait_for(lambda: ready_at(engine, unique, 1, "Workload") and len(replicas_of(unique)) == 1, 20, "ready again")
    assert leaks(stack, engine, api, unique, name, new) == []
    assert leaks(stack, engine, api, unique, name, old) == []


@pytest.mark.parametrize("where", ["conf", "a-file/conf"])
def test_a_file_templated_with_a_secret_is_written_with_it_and_shows_it_nowhere(
    stack: dict[str, str],
    engine: Engine,
    api: TestClient,
    unique: str,
    secret: tuple[str, str],
    tmp_path: Path,
    where: str,
) -> None:
    """Written where the path is good; failing (its parent a regular file) where it is not: neither says it."""
    name, value = secret
    (tmp_path / "a-file").write_text("not a folder")
    path = tmp_path / where
    sql(
        engine,
        "INSERT INTO files (name, path, content) VALUES (:n, :p, :c)",
        n=unique,
        p=str(path),
        c=f"password = {{{{ Secret/{name} }}}}\n",
    )
    if where == "conf":
        wait_for(lambda: ready_at(engine, unique, 1), 30, "the file written")
        assert path.read_text() == f"password = {value}\n"
    else:
        wait_for(lambda: (s := status(engine, unique)) and s["last_error"], 30, "the write failing")
    assert leaks(stack, engine, api, unique, name, value, kind="file") == []
    sql(engine, "DELETE FROM files WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique) is None, 30, "the file's status gone")


def test_a_deleted_secret_makes_its_workload_wait_and_its_replica_keep_running(
    stack: dict[str, str], engine: Engine, api: TestClient, unique: str, secret: tuple[str, str]
) -> None:
    name, value = secret
    insert_workload(engine, unique, "sleep 300", {"DB_PASSWORD": f"{{{{ Secret/{name} }}}}"})
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "the workload ready")
    before = wait_for(lambda: replicas_of(unique), 10, "its replica")[0].pid
    assert api.delete(f"/v1/secrets/{name}").status_code == 204

    def waiting() -> dict[str, Any] | None:
        row = status(engine, unique, "Workload")
        return row if row and row["phase"] == "Waiting" else None

    row = wait_for(waiting, 15, "the workload waiting for its secret")
    assert condition(row, "Ready")["reason"] == "DependencyMissing"
    assert f"Secret/{name}" in condition(row, "Ready")["message"], row["conditions"]
    assert [p.pid for p in replicas_of(unique)] == [before]
    assert api.put(f"/v1/secrets/{name}", json={"value": value}).status_code == 201
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 15, "ready again once set")


@pytest.mark.parametrize("server_password", [None, "wrong"])
def test_a_mysql_user_gets_its_password_and_neither_it_nor_the_servers_shows(
    stack: dict[str, str],
    engine: Engine,
    api: TestClient,
    unique: str,
    secret: tuple[str, str],
    server_password: str | None,
) -> None:
    """A server kind, succeeding (the user made with the secret's password) and failing (the server's URL holds a
    wrong password: access denied, which `setpoint plan` meets too): neither value shows."""
    password_secret, password = secret
    server_secret, user = f"{unique}-srv", f"{unique}-app"
    wrong = f"{LOOKS_LIKE_SECRET}-server-{uuid.uuid4().hex}"
    url = f"mysql://root:{wrong}@127.0.0.1:3306/" if server_password else "mysql://root@127.0.0.1:3306/"
    sql(engine, "INSERT INTO secrets (name, value) VALUES (:n, :v)", n=server_secret, v=url)
    try:
        sql(
            engine,
            "INSERT INTO mysql_users (name, server, password, interval_seconds) VALUES (:n, :s, :p, 60)",
            n=user,
            s=server_secret,
            p=password_secret,
        )
        if server_password:
            row = wait_for(lambda: (s := status(engine, user, "MySQLUser")) and s["last_error"] and s, 30, "denied")
            assert "Access denied" in row["last_error"], row["last_error"]
        else:
            wait_for(lambda: ready_at(engine, user, 1, "MySQLUser"), 30, "the user made")
            with pymysql.connect(host="127.0.0.1", port=3306, user=user, password=password) as conn:
                assert conn.open  # the secret's value is the user's password
        for value in (password, wrong):
            assert leaks(stack, engine, api, user, password_secret, value, "mysqluser", "mysql_users") == [], value
    finally:  # with the right URL, so that the teardown can log in
        sql(engine, "UPDATE secrets SET value = 'mysql://root@127.0.0.1:3306/' WHERE name = :n", n=server_secret)
        sql(engine, "DELETE FROM mysql_users WHERE name = :n", n=user)
        wait_for(lambda: status(engine, user, "MySQLUser") is None, 30, "the user torn down")
        sql(engine, "DELETE FROM secrets WHERE name = :n", n=server_secret)
        with pymysql.connect(host="127.0.0.1", port=3306, user="root") as conn, conn.cursor() as cursor:
            cursor.execute("DROP USER IF EXISTS %s@'%%'", (user,))
