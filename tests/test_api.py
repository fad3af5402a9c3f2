"""The REST API on real PostgreSQL: documents in, the same rows an admin edits in SQL, status from a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.app import create_app
from setpoint.settings import Settings
from tests.conftest import wait_for
from tests.helpers import sql

NEVER = "/tmp/setpoint-api-tests/never-written"
"""An absolute path for bodies that must be refused (a worker would write it, were one stored)."""


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(database_url=database_url, api_token=None), insecure_no_auth=True),
        base_url="http://localhost",
    ) as client:
        yield client


def post_file(client: TestClient, name: str, path: Path | str, **spec: Any) -> dict[str, Any]:
    answer = client.post("/v1/files", json={"name": name, "spec": {"path": str(path), **spec}})
    assert answer.status_code == 201, answer.text
    return answer.json()


def row(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM files WHERE name = :n"), {"n": name}).mappings().one()
    return dict(found)


def stored(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1 FROM files WHERE name = :n"), {"n": name}).first() is not None


def error_locations(answer: Any) -> list[list[Any]]:
    assert answer.status_code == 422, answer.text
    return [error["loc"] for error in answer.json()["detail"]]


def test_posted_file_is_reconciled_and_get_shows_it_ready(
    stack: dict, client: TestClient, unique: str, tmp_path: Path
) -> None:
    target = tmp_path / "motd"
    answer = client.post("/v1/files", json={"name": unique, "spec": {"path": str(target), "content": "hello\n"}})
    assert answer.status_code == 201
    assert answer.headers["location"] == f"/v1/files/{unique}"
    assert answer.json()["spec"]["mode"] == "0644", "fields left out take their defaults"
    got = wait_for(
        lambda: (doc := client.get(f"/v1/files/{unique}").json())["status"]["ready"] and doc, 20, "ready in the API"
    )
    assert got["kind"] == "File" and got["name"] == unique
    assert got["status"]["phase"] == "Ready" and got["status"]["observed_generation"] == 1
    assert {c["type"]: c["status"] for c in got["status"]["conditions"]}["Ready"] == "True"
    assert got["status"]["last_error"] is None
    assert target.read_text() == "hello\n"


def test_sql_change_shows_in_get_at_once_and_put_shows_in_sql(
    client: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    post_file(client, unique, tmp_path / "f", content="by api")
    sql(engine, "UPDATE files SET content = 'by sql' WHERE name = :n", n=unique)
    got = client.get(f"/v1/files/{unique}").json()
    assert got["spec"]["content"] == "by sql" and got["status"]["generation"] == 2

    answer = client.put(f"/v1/files/{unique}", json={"spec": {"path": str(tmp_path / "f"), "content": "by put"}})
    assert answer.status_code == 200
    assert row(engine, unique)["content"] == "by put" and row(engine, unique)["generation"] == 3


def test_put_of_an_unchanged_spec_leaves_the_generation_alone(
    client: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    spec = post_file(client, unique, tmp_path / "f", content="same", mode="0600")["spec"]
    assert client.put(f"/v1/files/{unique}", json={"spec": spec}).json()["status"]["generation"] == 1
    assert row(engine, unique)["generation"] == 1
    changed = client.put(f"/v1/files/{unique}", json={"spec": {**spec, "content": "other"}})
    assert changed.json()["status"]["generation"] == 2


def test_put_resets_the_fields_it_leaves_out(client: TestClient, unique: str, tmp_path: Path) -> None:
    post_file(client, unique, tmp_path / "f", content="x", mode="0600")
    replaced = client.put(f"/v1/files/{unique}", json={"spec": {"path": str(tmp_path / "f")}}).json()
    assert replaced["spec"]["mode"] == "0644" and replaced["spec"]["content"] == ""


def test_patch_merges_into_the_spec(client: TestClient, engine: Engine, unique: str, tmp_path: Path) -> None:
    post_file(client, unique, tmp_path / "f", content="one", mode="0600", labels={"team": "ops"})
    answer = client.patch(f"/v1/files/{unique}", json={"spec": {"content": "two"}})
    assert answer.status_code == 200
    assert answer.json()["spec"] == {
        "path": str(tmp_path / "f"),
        "content": "two",
        "mode": "0600",
        "interval_seconds": None,
        "paused": False,
        "deletion_policy": "delete",
        "labels": {"team": "ops"},
        "depends_on": [],
        "owned_by": None,
    }
    assert row(engine, unique)["content"] == "two" and row(engine, unique)["generation"] == 2
    assert client.patch(f"/v1/files/{unique}", json={"spec": {"path": "relative"}}).status_code == 422
    assert row(engine, unique)["path"] == str(tmp_path / "f")


@pytest.fixture(scope="module")
def locked(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=database_url, api_token="s3cret-token"))) as client:
        yield client


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic s3cret-token", "s3cret-token"])
def test_a_configured_token_is_required(locked: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for path in ("/v1/files", "/v1/files/anything", "/openapi.json", "/no/such/path"):
        answer = locked.get(path, headers=headers)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_the_right_token_opens_the_api_and_health_needs_none(locked: TestClient) -> None:
    assert locked.get("/v1/files", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert locked.get("/v1/files", headers={"Authorization": "bearer s3cret-token"}).status_code == 200
    assert locked.get("/healthz").json() == {"status": "ok"}
    schema = locked.get("/openapi.json", headers={"Authorization": "Bearer s3cret-token"}).json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_missing_resource_and_unknown_kind_are_404(client: TestClient, unique: str, tmp_path: Path) -> None:
    assert unique in client.get(f"/v1/files/{unique}").json()["detail"]
    assert client.put(f"/v1/files/{unique}", json={"spec": {"path": str(tmp_path)}}).status_code == 404
    assert client.patch(f"/v1/files/{unique}", json={"spec": {}}).status_code == 404
    assert client.delete(f"/v1/files/{unique}").status_code == 404
    assert client.get("/v1/widgets").status_code == 404
    assert client.get(f"/v1/widgets/{unique}").status_code == 404


def test_post_of_an_existing_name_is_409_and_changes_nothing(
    client: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    post_file(client, unique, tmp_path / "f", content="first")
    again = client.post("/v1/files", json={"name": unique, "spec": {"path": str(tmp_path / "f"), "content": "second"}})
    assert again.status_code == 409 and unique in again.json()["detail"]
    assert row(engine, unique)["content"] == "first" and row(engine, unique)["generation"] == 1


@pytest.mark.parametrize(
    ("name", "spec", "field"),
    [
        ("ok", {"path": "etc/motd"}, ["body", "spec", "path"]),
        ("ok", {"path": NEVER, "colour": "red"}, ["body", "spec", "colour"]),
        ("Not OK!", {"path": NEVER}, ["body", "name"]),
        ("ok", {"path": NEVER, "mode": 644}, ["body", "spec", "mode"]),
        ("ok", {"path": NEVER, "paused": "sometimes"}, ["body", "spec", "paused"]),
        ("ok", {}, ["body", "spec", "path"]),
        ("ok", {"path": NEVER, "content": "nul \x00 byte"}, ["body", "spec"]),
        ("ok", {"path": NEVER, "interval_seconds": 10**30}, ["body", "spec"]),
    ],
    ids=["relative path", "unknown field", "bad name", "wrong type", "not a boolean", "missing path", "NUL", "huge"],
)
def test_invalid_input_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, engine: Engine, unique: str, name: str, spec: dict[str, Any], field: list[str]
) -> None:
    name = unique if name == "ok" else name
    locations = error_locations(client.post("/v1/files", json={"name": name, "spec": spec}))
    assert locations[0][: len(field)] == field
    assert not stored(engine, name)


def test_relative_path_message_says_what_is_wrong(client: TestClient, unique: str) -> None:
    answer = client.post("/v1/files", json={"name": unique, "spec": {"path": "etc/motd"}})
    assert "absolute" in answer.json()["detail"][0]["msg"]


def phase(client: TestClient, name: str) -> str:
    return str(client.get(f"/v1/files/{name}").json()["status"]["phase"])


@pytest.fixture
def three(stack: dict, client: TestClient, unique: str, tmp_path: Path) -> list[str]:
    """Three files under one prefix, reconciled: two ready, and one refused by its controller (Invalid)."""
    names = [f"{unique}-a", f"{unique}-b", f"{unique}-c"]
    post_file(client, names[0], tmp_path / "a")
    post_file(client, names[1], tmp_path / "b")
    post_file(client, names[2], tmp_path)  # a folder
    expected = ["Ready", "Ready", "Invalid"]
    wait_for(lambda: [phase(client, name) for name in names] == expected, 20, "two ready and one invalid")
    return names


def listed(client: TestClient, **query: Any) -> tuple[list[str], int | None]:
    answer = client.get("/v1/files", params=query)
    assert answer.status_code == 200, answer.text
    return [item["name"] for item in answer.json()["items"]], answer.json()["next_offset"]


def test_list_filters_by_prefix_phase_and_readiness(client: TestClient, unique: str, three: list[str]) -> None:
    a, b, c = three
    assert listed(client, prefix=unique) == ([a, b, c], None)
    assert listed(client, prefix=unique, ready=True) == ([a, b], None)
    assert listed(client, prefix=unique, ready=False) == ([c], None)
    assert listed(client, prefix=unique, phase="Invalid") == ([c], None)
    assert listed(client, prefix=f"{unique}-b") == ([b], None)


def test_list_pages_by_limit_and_offset(client: TestClient, unique: str, three: list[str]) -> None:
    a, b, c = three
    assert listed(client, prefix=unique, limit=2) == ([a, b], 2)
    assert listed(client, prefix=unique, limit=2, offset=2) == ([c], None)
    assert listed(client, prefix=unique, offset=3) == ([], None)


@pytest.mark.parametrize(
    "query",
    [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"phase": "Sleepy"}, {"prefix": "Caps"}, {"ready": "maybe"}],
)
def test_list_refuses_bad_filters(client: TestClient, query: dict[str, Any]) -> None:
    assert error_locations(client.get("/v1/files", params=query))[0] == ["query", *query]


def test_delete_is_204_and_the_worker_removes_the_file(
    stack: dict, client: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    target = tmp_path / "motd"
    post_file(client, unique, target, content="bye")
    wait_for(lambda: target.exists(), 20, "file written")
    answer = client.delete(f"/v1/files/{unique}")
    assert answer.status_code == 204 and answer.content == b""
    assert client.get(f"/v1/files/{unique}").status_code == 404, "the row goes at once"
    assert not stored(engine, unique)
    wait_for(lambda: not target.exists(), 20, "file removed by the worker")


def test_health_checks_the_database(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    unreachable = Settings(database_url="postgresql://postgres@127.0.0.1:1/nowhere", api_token=None)
    with TestClient(create_app(unreachable, insecure_no_auth=True), base_url="http://localhost") as down:
        answer = down.get("/healthz")
    assert answer.status_code == 503 and answer.json() == {"status": "unavailable"}


def test_openapi_schema_types_each_kinds_spec(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert components["FileSpec"]["required"] == ["path"] and components["FileSpec"]["additionalProperties"] is False
    assert "required" not in components["FileSpecPatch"]
    assert components["FileCreate"]["properties"]["spec"]["$ref"] == "#/components/schemas/FileSpec"
    assert "command" in components["WorkloadSpec"]["properties"]
    assert set(schema["paths"]["/v1/files/{name}"]) == {"get", "put", "patch", "delete"}
    assert schema["paths"]["/v1/files"]["post"]["responses"].keys() >= {"201", "409", "422"}
