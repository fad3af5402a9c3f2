"""The REST API facing hostile clients: no token means no API, bodies and JSON have limits, writes do not race."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from api.app import create_app
from models.database import make_engine
from setpoint.errors import UsageError
from setpoint.settings import Settings
from tests.conftest import ROOT, Process, alembic, scratch_database, wait_for
from tests.helpers import sql


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def api_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    return {**env, "SETPOINT_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


@contextlib.contextmanager
def serving_api(env: dict[str, str], log: Path) -> Iterator[str]:
    """The real `setpoint api` (uvicorn) with `env`, its base URL; no traceback logged by the end."""
    port = free_port()
    api = Process([sys.executable, "-m", "setpoint.cli", "api", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return api.popen.poll() is not None or httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30, "api answering")
        assert api.popen.poll() is None, api.output()
        yield url
    finally:
        api.stop()
        assert "Traceback" not in api.output(), api.output()[-3000:]


def setpoint_api(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "api", "--port", str(free_port()), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--host", "0.0.0.0"], "SETPOINT_API_TOKEN"),
        (["--host", "127.0.0.1"], "SETPOINT_API_TOKEN"),
        (["--host", "0.0.0.0", "--insecure-no-auth"], "only on a loopback --host"),
        (["--host", "192.168.1.10", "--insecure-no-auth"], "only on a loopback --host"),
    ],
)
def test_the_api_refuses_to_start_without_a_token(database_url: str, args: list[str], said: str) -> None:
    done = setpoint_api(api_env(database_url), *args)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr


def test_without_a_token_only_an_explicit_loopback_choice_serves(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="SETPOINT_API_TOKEN"):
        create_app(Settings(database_url=database_url, api_token=None))
    port = free_port()
    args = [sys.executable, "-m", "setpoint.cli", "api", "--port", str(port), "--insecure-no-auth"]
    api = Process(args, api_env(database_url), tmp_path / "api.log")
    try:
        health = f"http://127.0.0.1:{port}/healthz"
        wait_for(lambda: api.popen.poll() is not None or b"ok" in _get(health), 30, "api answering")
        assert api.popen.poll() is None, api.output()
        assert "serving without authentication" in api.output()
    finally:
        api.stop()


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bytes(answer.read())
    except OSError:
        return b""


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, api_token=None)
    with TestClient(create_app(settings, insecure_no_auth=True), base_url="http://localhost") as client:
        yield client


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(
    client: TestClient, unique: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "x").encode()
    body = b'{"name": "%s", "spec": {"path": "%s", "content": "%s"}}' % (unique.encode(), path, b"x" * 1_100_000)
    declared = client.post("/v1/files", content=body, headers={"content-type": "application/json"})
    streamed = client.post(
        "/v1/files", content=iter([body[:1000], body[1000:]]), headers={"content-type": "application/json"}
    )
    for answer in (declared, streamed):
        assert answer.status_code == 413 and "larger than 1048576 bytes" in answer.json()["detail"]
    assert client.get(f"/v1/files/{unique}").status_code == 404


@pytest.fixture(scope="module")
def served(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real `setpoint api` (uvicorn), on loopback without a token; yields its base URL."""
    port = free_port()
    args = [sys.executable, "-m", "setpoint.cli", "api", "--port", str(port), "--insecure-no-auth"]
    api = Process(args, api_env(database_url), tmp_path_factory.mktemp("api") / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api.popen.poll() is not None or b"ok" in _get(f"{base}/healthz"), 30, "api answering")
        assert api.popen.poll() is None, api.output()
        yield base
    finally:
        api.stop()


def test_concurrent_patches_of_different_fields_both_land(served: str, unique: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=served, timeout=30) as http:
        names = [f"{unique}-{i}" for i in range(12)]
        for name in names:
            created = http.post("/v1/files", json={"name": name, "spec": {"path": str(tmp_path / name)}})
            assert created.status_code == 201, created.text

    answers: list[int] = []

    def patch(name: str, spec: dict[str, str], start: threading.Barrier) -> None:
        with httpx.Client(base_url=served, timeout=30) as http:
            start.wait()
            answers.append(http.patch(f"/v1/files/{name}", json={"spec": spec}).status_code)

    for name in names:
        start = threading.Barrier(2)
        pair = [
            threading.Thread(target=patch, args=(name, {"content": "from a"}, start)),
            threading.Thread(target=patch, args=(name, {"mode": "0600"}, start)),
        ]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()
    assert answers == [200] * 2 * len(names)
    with httpx.Client(base_url=served, timeout=30) as http:
        specs = [http.get(f"/v1/files/{name}").json()["spec"] for name in names]
    lost = [
        name for name, spec in zip(names, specs, strict=True) if (spec["content"], spec["mode"]) != ("from a", "0600")
    ]
    assert lost == [], f"{len(lost)} of {len(names)} pairs lost an update"


def test_if_match_writes_only_at_the_generation_given(client: TestClient, unique: str, tmp_path: Path) -> None:
    path = str(tmp_path / "x")
    created = client.post("/v1/files", json={"name": unique, "spec": {"path": path, "content": "a"}})
    assert created.headers["etag"] == '"1"'
    assert client.get(f"/v1/files/{unique}").headers["etag"] == '"1"'
    for accepted in ('"1"', "1", 'W/"1"'):
        answer = client.patch(f"/v1/files/{unique}", json={"spec": {"content": "a"}}, headers={"If-Match": accepted})
        assert answer.status_code == 200 and answer.headers["etag"] == '"1"', (accepted, answer.text)
    moved = client.patch(f"/v1/files/{unique}", json={"spec": {"content": "b"}}, headers={"If-Match": '"1"'})
    assert moved.status_code == 200 and moved.headers["etag"] == '"2"'
    for write in (client.patch, client.put):
        stale = write(f"/v1/files/{unique}", json={"spec": {"path": path, "content": "c"}}, headers={"If-Match": '"1"'})
        assert stale.status_code == 412 and "generation 2" in stale.json()["detail"], stale.text
    assert client.get(f"/v1/files/{unique}").json()["spec"]["content"] == "b", "a refused write changes nothing"
    replaced = client.put(f"/v1/files/{unique}", json={"spec": {"path": path}}, headers={"If-Match": 'W/"2"'})
    assert replaced.status_code == 200 and replaced.headers["etag"] == '"3"'
    assert client.delete(f"/v1/files/{unique}", headers={"If-Match": '"2"'}).status_code == 412
    assert client.get(f"/v1/files/{unique}").status_code == 200, "a refused delete deletes nothing"
    assert client.delete(f"/v1/files/{unique}", headers={"If-Match": '"3"'}).status_code == 204


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep: {"a": {"a": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def post(client: TestClient, raw: str) -> Any:
    return client.post("/v1/files", content=raw.encode(), headers={"content-type": "application/json"})


def refused_at(answer: Any) -> list[list[Any]]:
    assert answer.status_code == 422, answer.text
    return [error["loc"] for error in answer.json()["detail"]]


def test_labels_nested_too_deep_are_422_and_every_listing_still_answers(
    client: TestClient, unique: str, tmp_path: Path
) -> None:
    body = {"name": unique, "spec": {"path": str(tmp_path / "x"), "labels": nested(900)}}
    assert refused_at(client.post("/v1/files", json=body)) == [["body", "spec", "labels"]]
    assert client.get(f"/v1/files/{unique}").status_code == 404, "nothing stored"
    assert client.get("/v1/files").status_code == 200
    body["spec"]["labels"] = nested(16)
    assert client.post("/v1/files", json=body).status_code == 201, "16 levels are allowed"
    assert client.get("/v1/files", params={"prefix": unique}).json()["items"][0]["spec"]["labels"] == nested(16)
    patched = client.patch(f"/v1/files/{unique}", json={"spec": {"labels": nested(17)}})
    assert refused_at(patched) == [["body", "spec", "labels"]]


@pytest.mark.parametrize(
    ("spec", "field", "said"),
    [
        ('"content": "\\ud800"', "content", "lone surrogate"),
        ('"content": "a\\u0000b"', "content", "NUL"),
        ('"labels": {"\\udfff": "x"}', "labels", "lone surrogate"),
        ('"labels": {"team": "a\\u0000"}', "labels", "NUL"),
        ('"labels": {"big": "' + "x" * 70_000 + '"}', "labels", "64 KiB"),
        ('"interval_seconds": true', "interval_seconds", "valid integer"),
        ('"interval_seconds": "30"', "interval_seconds", "valid integer"),
        ('"interval_seconds": 604801', "interval_seconds", "604800"),
        ('"interval_seconds": 2147483647', "interval_seconds", "604800"),
    ],
)
def test_unstorable_values_are_422_naming_the_field(
    client: TestClient, unique: str, tmp_path: Path, spec: str, field: str, said: str
) -> None:
    answer = post(client, f'{{"name": "{unique}", "spec": {{"path": "{tmp_path / "x"}", {spec}}}}}')
    assert refused_at(answer) == [["body", "spec", field]]
    assert said in answer.text
    assert client.get(f"/v1/files/{unique}").status_code == 404
    assert client.get("/v1/files").status_code == 200


def test_an_interval_of_a_week_is_the_longest_accepted(client: TestClient, unique: str, tmp_path: Path) -> None:
    answer = client.post(
        "/v1/files", json={"name": unique, "spec": {"path": str(tmp_path / "x"), "interval_seconds": 604800}}
    )
    assert answer.status_code == 201 and answer.json()["spec"]["interval_seconds"] == 604800


@pytest.mark.parametrize(
    "env",
    [{"A": True}, {"A": None}, {"A": [1]}, {"A": {"B": "c"}}, {"1A": "x"}, {"A=B": "x"}, {"": "x"}, {"A-B": "x"}],
)
def test_workload_env_a_process_cannot_hold_is_422_naming_spec_env(
    client: TestClient, unique: str, env: dict[str, Any]
) -> None:
    answer = client.post("/v1/workloads", json={"name": unique, "spec": {"command": "true", "env": env}})
    assert answer.status_code == 422, answer.text
    assert all(loc[:3] == ["body", "spec", "env"] for loc in refused_at(answer))
    assert client.get(f"/v1/workloads/{unique}").status_code == 404


def test_workload_env_of_strings_and_numbers_is_stored(client: TestClient, unique: str) -> None:
    env = {"APP_VERSION": "2", "_PORT": 8080, "RATIO": 0.5}
    answer = client.post("/v1/workloads", json={"name": unique, "spec": {"command": "true", "env": env, "replicas": 0}})
    assert answer.status_code == 201 and answer.json()["spec"]["env"] == env


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("INSERT INTO files (name, path, labels) VALUES (:n, '/x', CAST(:deep AS jsonb))", "ck_files_labels_depth"),
        (
            "INSERT INTO files (name, path, labels) VALUES (:n, '/x', jsonb_build_object('big', repeat('x', 70000)))",
            "ck_files_labels_size",
        ),
        (
            "INSERT INTO files (name, path, interval_seconds) VALUES (:n, '/x', 604801)",
            "ck_files_interval_seconds_range",
        ),
        ("INSERT INTO workloads (name, command, env) VALUES (:n, 'true', '{\"A\": true}')", "ck_workloads_env_valid"),
        ("INSERT INTO workloads (name, command, env) VALUES (:n, 'true', '{\"1A\": \"x\"}')", "ck_workloads_env_valid"),
        ("INSERT INTO noops (name, labels) VALUES (:n, CAST(:deep AS jsonb))", "ck_noops_labels_depth"),
    ],
)
def test_the_database_refuses_what_no_client_could_read_back(
    engine: Engine, unique: str, statement: str, constraint: str
) -> None:
    with pytest.raises(IntegrityError, match=constraint):
        sql(engine, statement, n=unique, deep=json.dumps(nested(17)))


def test_migrating_clamps_intervals_above_a_week(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], "limits", migrate=False) as url:
        alembic("upgrade", "0003", database_url=url)
        limits = make_engine(url)
        try:
            sql(
                limits,
                "INSERT INTO files (name, path, interval_seconds) "
                "VALUES ('far', '/srv/far', 2147483647), ('near', '/srv/near', 60)",
            )
            alembic("upgrade", "head", database_url=url)
            with limits.connect() as conn:
                rows = dict(conn.execute(text("SELECT name, interval_seconds FROM files")).all())
        finally:
            limits.dispose()
    assert rows == {"far": 604800, "near": 60}
