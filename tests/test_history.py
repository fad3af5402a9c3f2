"""Desired-state history in the database and the REST API: what the `changes` trigger records for each writer and
role, that a secret's value never lands there, that it stays bounded, and the API's history and rollback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.app import create_app
from models.database import libpq_url
from resources import history, kinds
from scheduler import retention
from setpoint.settings import Settings
from tests.conftest import ROOT, wait_for
from tests.helpers import sql, unwatched

INSERT = "INSERT INTO files (name, path, content) VALUES (:n, '/tmp/setpoint-history-' || CAST(:n AS varchar), 'one')"


def changes(engine: Engine, name: str, kind: str = "File") -> list[dict[str, Any]]:
    """The resource's changes, oldest first, as an admin reads them."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM changes WHERE kind = :kind AND name = :name ORDER BY id"), {"kind": kind, "name": name}
        )
        return [dict(row) for row in rows.mappings()]


def as_role(database_url: str, role: str, *statements: str) -> list[Any]:
    """Run statements as one of migration 0003's roles (SET ROLE from the test's superuser); the last one's rows."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        conn.execute(f"SET ROLE {role}")
        rows: list[Any] = []
        for statement in statements:
            cursor = conn.execute(statement)
            rows = cursor.fetchall() if cursor.description else []
        return rows


def test_a_no_op_update_records_nothing_and_a_delete_keeps_the_row_it_removed(engine: Engine, unique: str) -> None:
    unwatched(engine, INSERT, unique)
    sql(engine, "UPDATE files SET content = 'one' WHERE name = :n", n=unique)
    sql(engine, "UPDATE files SET content = 'two' WHERE name = :n", n=unique)
    sql(engine, "DELETE FROM files WHERE name = :n", n=unique)
    found = changes(engine, unique)
    assert [(c["operation"], c["generation"]) for c in found] == [("insert", 1), ("update", 2), ("delete", 2)]
    assert found[1]["changed"] == {"content": {"old": "one", "new": "two"}}
    assert found[2]["desired"]["content"] == "two" and found[2]["changed"]["content"] == {"old": "two", "new": None}
    assert not {"id", "generation", "created_at", "updated_at"} & (set(found[1]["desired"]) | set(found[0]["changed"]))


def test_a_large_value_is_kept_whole_once_per_change_and_diff_shows_it_whole(engine: Engine, unique: str) -> None:
    """`changed` holds a value over 2 KiB as its digest and size; the desired row keeps it, and diff reads that."""
    big = "x" * 10_000 + "\n"
    unwatched(engine, INSERT, unique)
    sql(engine, "UPDATE files SET content = :c WHERE name = :n", n=unique, c=big)
    sql(engine, "UPDATE files SET content = 'three' WHERE name = :n", n=unique)
    _, grew, shrank = changes(engine, unique)
    digest = {"digest": "sha256:" + hashlib.sha256(big.encode()).hexdigest(), "bytes": 10_001}
    assert grew["changed"]["content"] == {"old": "one", "new": digest} and grew["desired"]["content"] == big
    assert shrank["changed"]["content"] == {"old": digest, "new": "three"}
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT max(pg_column_size(changed)) FROM changes WHERE name = :n"), {"n": unique}
        ).scalar_one()
    assert stored < 1000, "the 10 KB value is in `changed` as a digest, not itself"
    kind = kinds.resolve("File")
    [content] = history.diff(engine, kind, unique, 2, 3)
    assert (content.field, content.old, content.new) == ("content", big, "three")


def test_the_api_and_worker_roles_write_history_they_cannot_forge(
    engine: Engine, database_url: str, unique: str
) -> None:
    unwatched(engine, INSERT, unique)
    sql(engine, "UPDATE files SET owned_by = 'App/' || CAST(:n AS varchar) WHERE name = :n", n=unique)
    as_role(database_url, "setpoint_api", f"UPDATE files SET content = 'by api' WHERE name = '{unique}'")
    as_role(database_url, "setpoint_worker", f"UPDATE files SET content = 'by worker' WHERE name = '{unique}'")
    assert [c["changed"].get("content", {}).get("new") for c in changes(engine, unique)][-2:] == ["by api", "by worker"]
    assert as_role(database_url, "setpoint_api", f"SELECT count(*) FROM changes WHERE name = '{unique}'") == [(4,)]
    for role in ("setpoint_api", "setpoint_worker"):  # nobody writes history but the trigger
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_role(database_url, role, f"DELETE FROM changes WHERE name = '{unique}'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(database_url, "setpoint_worker", "SELECT count(*) FROM changes")


def test_no_secret_value_is_in_changes(engine: Engine, stack: dict, unique: str) -> None:
    first, second = f"first-{unique}-correct-horse", f"second-{unique}-battery-staple"
    sql(engine, "INSERT INTO secrets (name, value) VALUES (:n, :v)", n=unique, v=first)
    done = subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "secret", "set", unique, "--from-env", "ROTATED", "--reason", "rotate"],
        cwd=ROOT,
        env={**stack, "ROTATED": second},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    sql(engine, "DELETE FROM secrets WHERE name = :n", n=unique)

    found = changes(engine, unique, kind="Secret")
    assert [c["operation"] for c in found] == ["insert", "update", "delete"]
    assert found[1]["reason"] == "rotate" and found[1]["changed"]["value"]["new"].startswith("sha256:")
    assert found[1]["changed"]["value"]["old"] == found[0]["desired"]["value"] != found[1]["desired"]["value"]
    with engine.connect() as conn:
        leaked = conn.execute(
            text("SELECT count(*) FROM changes AS c WHERE strpos(c::text, :a) > 0 OR strpos(c::text, :b) > 0"),
            {"a": first, "b": second},
        ).scalar()
    assert leaked == 0
    shown = subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "history", "secret", unique, "-o", "json"],
        cwd=ROOT,
        env=stack,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and len(json.loads(shown.stdout)) == 3
    assert first not in shown.stdout and second not in shown.stdout


def test_pruning_keeps_each_resources_last_changes_and_forgets_the_long_deleted(engine: Engine, unique: str) -> None:
    unwatched(engine, INSERT, unique)
    for i in range(6):
        sql(engine, "UPDATE files SET content = :c WHERE name = :n", n=unique, c=f"v{i}")
    gone, recent = f"{unique}-gone", f"{unique}-recent"
    for name in (gone, recent):
        unwatched(engine, INSERT, name)
        sql(engine, "DELETE FROM files WHERE name = :n", n=name)
    sql(engine, "UPDATE changes SET at = at - interval '30 days' WHERE name = :n", n=gone)

    _, newest = retention.prune_changes(engine, keep=5, days=14)
    assert [c["generation"] for c in changes(engine, unique)] == [3, 4, 5, 6, 7], "the last 5, the newest kept"
    assert changes(engine, gone) == [] and len(changes(engine, recent)) == 2

    # Later prunes look only at the resources changed since (the others have no more than they keep).
    retention.prune_changes(engine, keep=3, days=14, after=newest)
    assert len(changes(engine, unique)) == 5
    sql(engine, "UPDATE files SET content = 'v6' WHERE name = :n", n=unique)
    retention.prune_changes(engine, keep=3, days=14, after=newest)
    assert [c["generation"] for c in changes(engine, unique)] == [6, 7, 8]


def test_reconcile_now_requests_never_push_out_the_edits_a_rollback_needs(engine: Engine, unique: str) -> None:
    unwatched(engine, INSERT, unique)
    sql(engine, "UPDATE files SET content = 'two' WHERE name = :n", n=unique)
    for _ in range(4):
        sql(engine, "SELECT setpoint_reconcile_now('File', :n)", n=unique)
    retention.prune_changes(engine, keep=2, days=14)
    kept = [(c["operation"], c["generation"]) for c in changes(engine, unique)]
    assert kept == [("insert", 1), ("update", 2), ("reconcile", 2), ("reconcile", 2)]


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=database_url, api_token="history-token"))) as client:
        client.headers["Authorization"] = "Bearer history-token"
        yield client


def test_api_history_pages_newest_first_with_the_callers_reason(
    client: TestClient, engine: Engine, unique: str
) -> None:
    unwatched(engine, INSERT, unique)
    for content in ("two", "three"):
        answer = client.patch(
            f"/v1/files/{unique}",
            json={"spec": {"content": content}},
            headers={"X-Setpoint-Reason": f"to {content}\r\n"},
        )
        assert answer.status_code == 200, answer.text
    page = client.get(f"/v1/files/{unique}/history", params={"limit": 2}).json()
    assert [(e["generation"], e["actor"], e["reason"]) for e in page["items"]] == [
        (3, "api:token", "to three"),
        (2, "api:token", "to two"),
    ]
    rest = client.get(f"/v1/files/{unique}/history", params={"limit": 2, "before": page["next_before"]}).json()
    assert [e["generation"] for e in rest["items"]] == [1] and rest["next_before"] is None
    assert rest["items"][0]["actor"] is None  # the SQL insert: no actor set
    assert client.get(f"/v1/files/{unique}-nope/history").status_code == 404


def test_api_rollback_writes_a_new_generation_or_names_what_is_wrong(
    client: TestClient, engine: Engine, unique: str
) -> None:
    unwatched(engine, INSERT, unique)
    sql(engine, "UPDATE files SET content = 'two', paused = true, owned_by = 'App/x' WHERE name = :n", n=unique)

    assert (
        client.post(f"/v1/files/{unique}/rollback", json={"generation": 1}, headers={"If-Match": '"1"'}).status_code
        == 412
    )
    rolled = client.post(f"/v1/files/{unique}/rollback", json={"generation": 1}, headers={"If-Match": '"2"'})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json() == {
        "kind": "File", "name": unique, "to_generation": 1, "previous": 2, "generation": 3, "changed": True,
        "fields": ["content"], "kept": ["owned_by", "paused"],
    }  # fmt: skip
    assert rolled.headers["ETag"] == '"3"'
    with engine.connect() as conn:
        row = conn.execute(text("SELECT content, paused, owned_by FROM files WHERE name = :n"), {"n": unique}).one()
    assert tuple(row) == ("one", True, "App/x"), "still paused and owned: a rollback restores what it is, not how"
    newest = changes(engine, unique)[-1]
    assert newest["actor"] == "api:token" and newest["reason"] == "rollback to generation 1"

    again = client.post(f"/v1/files/{unique}/rollback", json={"generation": 1}).json()
    assert again["changed"] is False and again["generation"] == 3

    unknown = client.post(f"/v1/files/{unique}/rollback", json={"generation": 9})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "generation"]
    assert "no generation 9" in unknown.json()["detail"][0]["msg"]
    assert client.post(f"/v1/files/{unique}/rollback", json={"generation": 0}).status_code == 422
    assert client.post(f"/v1/files/{unique}-nope/rollback", json={"generation": 1}).status_code == 404


def test_rows_a_controller_writes_are_recorded_as_their_owners(stack: dict, engine: Engine, unique: str) -> None:
    sql(engine, "INSERT INTO apps (name, command, replicas) VALUES (:n, 'sleep 300', 0)", n=unique)
    try:
        written = wait_for(lambda: changes(engine, unique, kind="Workload"), 30, "the app's workload written")
        assert written[0]["actor"] == f"setpoint:App/{unique}" and written[0]["db_user"] == "postgres"
    finally:
        sql(engine, "DELETE FROM apps WHERE name = :n", n=unique)


def test_a_users_own_kind_made_after_the_migration_has_history_too(engine: Engine, unique: str) -> None:
    # The tests' kinds are created as a user's migration makes them, with triggers.attach after `alembic upgrade`.
    sql(engine, "INSERT INTO noops (name) VALUES (:n)", n=unique)
    sql(engine, 'UPDATE noops SET labels = \'{"team": "web"}\' WHERE name = :n', n=unique)
    found = changes(engine, unique, kind="Noop")
    assert [c["operation"] for c in found] == ["insert", "update"]
    assert found[1]["changed"] == {"labels": {"old": {}, "new": {"team": "web"}}}


def test_a_rollback_that_would_close_a_cycle_now_is_refused_naming_the_generation(
    client: TestClient, engine: Engine, unique: str
) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    unwatched(engine, INSERT, b)
    unwatched(engine, INSERT, a)
    sql(engine, "UPDATE files SET depends_on = ARRAY['File/' || CAST(:b AS text)] WHERE name = :a", a=a, b=b)
    sql(engine, "UPDATE files SET depends_on = '{}' WHERE name = :a", a=a)
    sql(engine, "UPDATE files SET depends_on = ARRAY['File/' || CAST(:a AS text)] WHERE name = :b", a=a, b=b)
    refused = client.post(f"/v1/files/{a}/rollback", json={"generation": 2})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "generation"]
    assert "cycle" in refused.json()["detail"][0]["msg"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT generation FROM files WHERE name = :a"), {"a": a}).scalar() == 3
