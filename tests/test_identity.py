"""A resource is one life of a name (its uid), and is ready only once its current generation has been observed."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from api.app import create_app
from models.database import libpq_url
from resources import documents, kinds
from scheduler import retention
from setpoint.settings import Settings
from tests.conftest import ROOT, alembic, scratch_database, wait_for
from tests.helpers import ready_at, runs, sql, status, unwatched, view
from worker import store
from worker.outcome import StatusUpdate


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(database_url=database_url, api_token=None), insecure_no_auth=True),
        base_url="http://localhost",
    ) as client:
        yield client


def describe(env: dict[str, str], name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "describe", "file", name],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("Last runs", 1)[1]


def test_a_name_created_again_is_a_new_resource_without_the_old_ones_runs(
    stack: dict[str, str], client: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    body = {"name": unique, "spec": {"path": str(tmp_path / "motd"), "content": "first life"}}
    first = client.post("/v1/files", json=body).json()
    wait_for(lambda: ready_at(engine, unique, 1), 20, "the first one reconciled")
    assert client.delete(f"/v1/files/{unique}").status_code == 204
    wait_for(lambda: status(engine, unique) is None, 20, "the first one torn down")
    assert [run["outcome"] for run in runs(engine, unique)][-1] == "deleted"

    second = client.post("/v1/files", json={**body, "spec": {**body["spec"], "content": "second life"}}).json()
    assert second["uid"] != first["uid"], "a name used again is another resource"
    wait_for(lambda: ready_at(engine, unique, 1), 20, "the second one reconciled")

    shown = documents.runs(engine, kinds.resolve("File"), unique)
    assert shown and all(run["outcome"] != "deleted" for run in shown), shown
    assert "deleted" not in describe(stack, unique), "describe's last runs are the second one's only"
    by_life = {str(run["uid"]): run["outcome"] for run in runs(engine, unique)}
    assert set(by_life) == {first["uid"], second["uid"]} and by_life[first["uid"]] == "deleted"
    assert str(status(engine, unique)["uid"]) == second["uid"] == client.get(f"/v1/files/{unique}").json()["uid"]  # type: ignore[index]


def test_a_uid_is_the_databases_alone(engine: Engine, unique: str) -> None:
    taken = str(uuid.uuid4())
    unwatched(
        engine,
        "INSERT INTO files (name, path, uid) VALUES (:n, '/tmp/uid-' || CAST(:n AS varchar), :u)",
        unique,
        u=taken,
    )
    with engine.connect() as conn:
        uid = conn.execute(text("SELECT uid FROM files WHERE name = :n"), {"n": unique}).scalar_one()
    assert str(uid) != taken, "a uid given at INSERT is replaced by a new one"
    with pytest.raises(IntegrityError, match="uid is immutable"):
        sql(engine, "UPDATE files SET uid = gen_random_uuid() WHERE name = :n", n=unique)
    assert view(engine, unique)["uid"] == status(engine, unique)["uid"] == uid  # type: ignore[index]


RUN = """INSERT INTO runs (kind, name, uid, generation, started_at, finished_at, duration_ms, outcome)
         SELECT 'File', :n, CAST(:uid AS uuid), 1, now() - make_interval(days => :age_days) - make_interval(secs => i),
                now() - make_interval(days => :age_days) - make_interval(secs => i), 1, :outcome
         FROM generate_series(1, :count) AS i"""


def test_retention_forgets_an_earlier_life_of_a_name_in_use(engine: Engine, unique: str) -> None:
    unwatched(engine, "INSERT INTO files (name, path) VALUES (:n, '/tmp/lives-' || CAST(:n AS varchar))", unique)
    current = str(status(engine, unique)["uid"])  # type: ignore[index]
    earlier = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(text(RUN), {"n": unique, "uid": earlier, "outcome": "changed", "count": 3, "age_days": 30})
        conn.execute(text(RUN), {"n": unique, "uid": current, "outcome": "changed", "count": 3, "age_days": 100})
    retention.prune(engine, keep=10, days=14)
    assert {str(run["uid"]) for run in runs(engine, unique)} == {current}
    assert len(runs(engine, unique)) == 3, "the live one keeps its small history"


def test_a_patch_answers_not_ready_until_its_generation_is_observed(
    client: TestClient, engine: Engine, unique: str, tmp_path: Path
) -> None:
    assert client.post("/v1/files", json={"name": unique, "spec": {"path": str(tmp_path / "f")}}).status_code == 201
    # As a worker leaves it after reconciling generation 1; a day from due, so the running stack leaves it alone.
    unwatched(
        engine,
        "UPDATE statuses SET observed_generation = 1, ready = true, phase = 'Ready' WHERE kind = 'File' AND name = :n",
        unique,
    )
    assert client.get(f"/v1/files/{unique}").json()["status"]["ready"] is True
    answer = client.patch(f"/v1/files/{unique}", json={"spec": {"content": "changed"}})
    assert answer.status_code == 200, answer.text
    shown = answer.json()["status"]
    assert (shown["generation"], shown["observed_generation"], shown["ready"]) == (2, 1, False)
    assert shown["message"] == "generation 2 not yet observed (observed 1)"


def test_resource_status_is_not_ready_while_a_generation_is_unobserved(engine: Engine, unique: str) -> None:
    unwatched(engine, "INSERT INTO files (name, path) VALUES (:n, '/tmp/unobserved-' || CAST(:n AS varchar))", unique)
    assert view(engine, unique)["message"] == "generation 1 not yet observed"  # type: ignore[index]
    unwatched(
        engine,
        "UPDATE statuses SET observed_generation = 1, ready = true, phase = 'Ready' WHERE kind = 'File' AND name = :n",
        unique,
    )
    assert view(engine, unique)["ready"] is True  # type: ignore[index]
    unwatched(engine, "UPDATE files SET content = 'new' WHERE name = :n", unique)
    row = view(engine, unique)
    assert row is not None and (row["generation"], row["observed_generation"], row["ready"]) == (2, 1, False)
    assert row["message"] == "generation 2 not yet observed (observed 1)" and row["phase"] == "Ready"
    unwatched(engine, "UPDATE statuses SET ready = false, last_error = 'disk full' WHERE name = :n", unique)
    assert view(engine, unique)["message"] == "disk full", "a failure's message says more"  # type: ignore[index]


def test_the_upgrade_gives_each_resource_a_uid_and_its_runs_since_its_creation(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], "identity", migrate=False) as url:
        alembic("upgrade", "0006", database_url=url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            run = (
                "INSERT INTO runs (kind, name, started_at, finished_at, duration_ms, outcome) "
                "VALUES ('File', 'motd', %s, %s, 1, 'changed')"
            )
            conn.execute(run, ("2020-01-01Z", "2020-01-01Z"))  # an earlier life's
            conn.execute("INSERT INTO files (name, path) VALUES ('motd', '/srv/motd'), ('gone', '/srv/gone')")
            conn.execute("DELETE FROM files WHERE name = 'gone'")  # a tombstone, still being torn down
            conn.execute(run, ("now", "now"))
        alembic("upgrade", "head", database_url=url)
        with psycopg.connect(libpq_url(url)) as conn:
            uids = dict(conn.execute("SELECT name, uid FROM statuses").fetchall())
            assert uids["motd"] == conn.execute("SELECT uid FROM files WHERE name = 'motd'").fetchone()[0]  # type: ignore[index]
            assert uids["gone"] is not None
            kept = conn.execute("SELECT uid FROM runs WHERE name = 'motd' ORDER BY started_at").fetchall()
        assert kept == [(None,), (uids["motd"],)]
        alembic("downgrade", "0006", database_url=url)


def test_a_reconcile_of_an_earlier_life_writes_nothing_into_the_next_ones_status(engine: Engine, unique: str) -> None:
    insert = (
        "INSERT INTO files (name, path, deletion_policy) VALUES (:n, '/tmp/lives-' || CAST(:n AS varchar), 'orphan')"
    )
    unwatched(engine, insert, unique)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        snapshot = store.begin(conn, "files", "File", unique)
        assert snapshot.locked and snapshot.status is not None
        # While it works: the row is deleted (orphaned, so its status goes at once) and its name used again.
        unwatched(engine, "DELETE FROM files WHERE name = :n", unique)
        unwatched(engine, insert, unique)
        now = datetime.now(UTC)
        found = StatusUpdate(1, True, "Ready", [], {}, [], None, 0, None, now, 60, 60, True)
        run = store.RunRecord(snapshot.status["uid"], 1, now, now, "noop", [], None, "w", None, 0)
        store.finish(conn, "File", unique, None, found, run, deleting=False)
    row = status(engine, unique)
    assert row is not None and str(row["uid"]) != snapshot.status["uid"]
    assert (row["observed_generation"], row["ready"], row["phase"]) == (None, False, "Pending")
    assert [str(run["uid"]) for run in runs(engine, unique)] == [snapshot.status["uid"]]
