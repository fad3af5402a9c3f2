"""The API token, attacked: only the exact bearer token opens any method on any path, and only /healthz is open.

Runs the real `setpoint api` (uvicorn) with a token, and sends requests over plain HTTP so that paths reach the
server as written (an HTTP client library would resolve `..` before sending).
"""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine, text

from tests.conftest import Process, wait_for
from tests.test_api_safety import _get, api_env, free_port

TOKEN = "s3cret-token"

WRONG_HEADERS = [
    "",
    "Bearer",
    "Bearer ",
    "Bearer    ",
    "Bearer s3cret",  # a prefix of the token
    "Bearer s",
    "Bearer s3cret-token-and-more",  # the token with more after it
    "Bearer s3cret-tokenX",
    "Bearer xs3cret-token",
    "Bearer S3CRET-TOKEN",
    "Bearer s3cret-token s3cret-token",
    "Bearers3cret-token",
    "BearerX s3cret-token",
    "Basic s3cret-token",
    "Token s3cret-token",
    "s3cret-token",
    " s3cret-token",
]
METHODS_AND_PATHS = [
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("PUT", "/v1/files"),
    ("PATCH", "/v1/files"),
    ("DELETE", "/v1/files"),
    ("OPTIONS", "/v1/files"),
    ("HEAD", "/v1/files"),
    ("GET", "/v1/files/{name}"),
    ("POST", "/v1/files/{name}"),
    ("PUT", "/v1/files/{name}"),
    ("PATCH", "/v1/files/{name}"),
    ("DELETE", "/v1/files/{name}"),
    ("DELETE", "/v1/workloads/{name}"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("POST", "/healthz/x"),
]
NEAR_MISSES = [
    "/healthzX",
    "/healthz/",
    "/healthz/.",
    "/healthz.json",
    "/Healthz",
    "/HEALTHZ",
    "//healthz",
    "/./healthz",
    "/v1/../healthz",
    "/v1/files/../healthz",
    "/v1/files/%2e%2e/healthz",
    "/v1/files/..%2Fhealthz",
    "/healthz%2F",
    "/healthz%00",
    "/healthz;x",
    "/healthz/../v1/files",
    "/healthz%2F..%2Fv1%2Ffiles",
]


@pytest.fixture(scope="module")
def locked(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The real `setpoint api` on loopback with SETPOINT_API_TOKEN set; yields (host, port)."""
    port = free_port()
    env = {**api_env(database_url), "SETPOINT_API_TOKEN": TOKEN}
    args = [sys.executable, "-m", "setpoint.cli", "api", "--port", str(port)]
    api = Process(args, env, tmp_path_factory.mktemp("api") / "api.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: api.popen.poll() is not None or b"ok" in _get(f"{base}/healthz"), 30, "api answering")
        assert api.popen.poll() is None, api.output()
        yield "127.0.0.1", port
    finally:
        api.stop()


def send(
    server: tuple[str, int], method: str, path: str, authorization: str | None = None, body: object = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent byte for byte as given; (status, headers, body)."""
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if authorization is not None:
            conn.putheader("Authorization", authorization)
        payload = json.dumps(body).encode() if body is not None else b""
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders(payload)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def stored(engine: Engine, *names: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT to_jsonb(f)::text FROM files AS f WHERE name = ANY(:names) ORDER BY name"),
            {"names": list(names)},
        )
        return list(rows.scalars())


@pytest.mark.parametrize("authorization", [None, *WRONG_HEADERS])
def test_without_the_exact_token_no_method_on_any_path_answers(
    locked: tuple[str, int], engine: Engine, unique: str, tmp_path: Path, authorization: str | None
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO files (name, path, content) VALUES (:n, :p, 'kept')"),
            {"n": unique, "p": str(tmp_path / "kept")},
        )
    before = stored(engine, unique, f"{unique}-new")
    body = {"name": f"{unique}-new", "spec": {"path": str(tmp_path / "new"), "content": "stolen"}}
    for method, path in METHODS_AND_PATHS:
        status, headers, said = send(locked, method, path.format(name=unique), authorization, body)
        assert status == 401, (method, path, status, said)
        assert headers["www-authenticate"].startswith("Bearer"), (method, path)
        assert b"kept" not in said and unique.encode() not in said
    assert stored(engine, unique, f"{unique}-new") == before, "a refused request changed nothing"


def test_the_exact_token_opens_every_method(
    locked: tuple[str, int], engine: Engine, unique: str, tmp_path: Path
) -> None:
    bearer = f"Bearer {TOKEN}"
    create = {"name": unique, "spec": {"path": str(tmp_path / "f"), "content": "one"}}
    assert send(locked, "POST", "/v1/files", bearer, create)[0] == 201
    assert send(locked, "GET", f"/v1/files/{unique}", bearer)[0] == 200
    assert send(locked, "PUT", f"/v1/files/{unique}", bearer, {"spec": {"path": str(tmp_path / "f")}})[0] == 200
    assert send(locked, "PATCH", f"/v1/files/{unique}", bearer, {"spec": {"content": "two"}})[0] == 200
    assert send(locked, "DELETE", f"/v1/files/{unique}", f"bearer   {TOKEN}")[0] == 204
    assert stored(engine, unique) == []


@pytest.mark.parametrize("path", NEAR_MISSES)
def test_only_the_health_check_itself_is_open(locked: tuple[str, int], path: str) -> None:
    status, headers, said = send(locked, "GET", path)
    assert status == 401, (path, status, said)
    assert headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/healthz", "/healthz?probe=1"])
def test_the_health_check_needs_no_token(locked: tuple[str, int], path: str) -> None:
    status, _, said = send(locked, "GET", path)
    assert (status, json.loads(said)) == (200, {"status": "ok"}), urlsplit(path).path
