"""Ownership: operators built on operators. An App owns its Files and its Workload; deleting an owner deletes what
it owns first (or orphans it), an admin's edit of an owned row is put back, and the worker's database role writes
owned rows only. On the shared real stack, every resource with a 300 s interval, so only events explain speed."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from controllers import app as apps
from models.app import App
from models.database import libpq_url, make_engine
from tests.conftest import replicas_of, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, runs, sql, status
from worker import owned

SLOW = 300
"""Every resource's interval: nothing here may wait for one."""


def _app(engine: Engine, name: str, files: dict[str, str], **columns: Any) -> None:
    extra = "".join(f", {column}" for column in columns)
    values = "".join(f", :{column}" for column in columns)
    sql(
        engine,
        "INSERT INTO apps (name, command, files, interval_seconds"
        f"{extra}) VALUES (:n, 'sleep 600', CAST(:f AS jsonb), {SLOW}{values})",
        n=name,
        f=json.dumps(files),
        **columns,
    )


def _row(engine: Engine, table: str, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT * FROM {table} WHERE name = :n"), {"n": name}).mappings().first()
    return dict(row) if row else None


def _config_sha(process: psutil.Process) -> str | None:
    try:
        return process.environ().get("CONFIG_SHA")
    except psutil.Error:
        return None


def _sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def _ready_condition(row: dict[str, Any] | None) -> dict[str, Any]:
    assert row is not None
    return next(c for c in row["conditions"] if c["type"] == "Ready")


def _settled(engine: Engine, name: str) -> bool:
    """Ready, and not due again before most of its interval has passed."""
    with engine.connect() as conn:
        query = (
            "SELECT ready AND next_reconcile_at > now() + interval '200 seconds' FROM statuses "
            "WHERE kind = 'App' AND name = :n"
        )
        return bool(conn.execute(text(query), {"n": name}).scalar())


def test_an_app_plans_its_config_files_then_a_workload_that_rolls_with_them() -> None:
    app = App(name="web", command="serve", replicas=2, env={"PORT": 80}, files={"/etc/web/b.conf": "b"})
    file = apps.file_name("web", "/etc/web/b.conf")
    assert file == "web-" + hashlib.sha256(b"/etc/web/b.conf").hexdigest()[:12]
    plan = apps.AppController().plan(app, apps.AppState({}))
    assert plan == [
        owned.ApplyOwned(
            "File", file, {"path": "/etc/web/b.conf", "content": "b", "interval_seconds": None}, "App/web"
        ),
        owned.ApplyOwned(
            "Workload",
            "web",
            {
                "command": "serve",
                "replicas": 2,
                "env": {"PORT": 80, "CONFIG_SHA": f"{{{{ File/{file}.outputs.sha256 }}}}"},
                "health_command": None,
                "health_url": None,
                "depends_on": [f"File/{file}"],
                "interval_seconds": None,
            },
            "App/web",
        ),
    ]
    # what it owns already as it wants it is left alone; what it no longer wants is deleted
    seen = {
        f"File/{file}": owned.Owned("File", file, {"name": file, **plan[0].spec}, "Ready", True, ""),  # type: ignore[attr-defined]
        "File/web-old": owned.Owned("File", "web-old", {"name": "web-old"}, "Ready", True, ""),
    }
    assert apps.AppController().plan(app, apps.AppState(seen)) == [
        plan[1],
        owned.DeleteOwned("File", "web-old", "App/web"),
    ]


def test_editing_an_apps_config_file_rolls_its_replicas_with_the_new_config_sha(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = tmp_path / "app.conf"
    inserted = time.monotonic()
    _app(engine, unique, {str(conf): "v1\n"})
    wait_for(lambda: [p for p in replicas_of(unique) if _config_sha(p) == _sha("v1\n")], 20, "replica with v1 digest")
    wait_for(lambda: ready_at(engine, unique, 1, "App"), 20, "app ready")
    print(f"app inserted -> ready with its replica running: {(time.monotonic() - inserted) * 1000:.0f} ms")
    assert conf.read_text() == "v1\n"
    file = _row(engine, "files", apps.file_name(unique, str(conf)))
    workload = _row(engine, "workloads", unique)
    assert file is not None and file["owned_by"] == f"App/{unique}"  # admins see the parts like any resource
    assert workload is not None and workload["owned_by"] == f"App/{unique}"
    assert workload["depends_on"] == [f"File/{file['name']}"]

    edited = time.monotonic()
    sql(
        engine, "UPDATE apps SET files = CAST(:f AS jsonb) WHERE name = :n", f=json.dumps({str(conf): "v2\n"}), n=unique
    )
    wait_for(
        lambda: (shas := [_config_sha(p) for p in replicas_of(unique)]) == [_sha("v2\n")] and shas,
        30,
        "the replica rolled to the v2 digest, the old one stopped",
    )
    print(f"app's config edited -> replica rolled: {(time.monotonic() - edited) * 1000:.0f} ms")
    assert conf.read_text() == "v2\n"
    wait_for(lambda: ready_at(engine, unique, 2, "App"), 20, "app ready at its new generation")
    sql(engine, "DELETE FROM apps WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique, "App") is None, 30, "app torn down")


def test_deleting_an_app_stops_its_replicas_before_removing_its_files(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = tmp_path / "app.conf"
    file = apps.file_name(unique, str(conf))
    _app(engine, unique, {str(conf): "v1\n"})
    wait_for(lambda: ready_at(engine, unique, 1, "App"), 20, "app ready")
    wait_for(lambda: replicas_of(unique), 20, "replica running")

    deleted = time.monotonic()
    sql(engine, "DELETE FROM apps WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique, "App") is None, 30, "the app torn down, after what it owns")
    print(f"app deleted -> app, workload and file torn down: {(time.monotonic() - deleted) * 1000:.0f} ms")
    assert replicas_of(unique) == []
    assert not conf.exists()
    assert _row(engine, "files", file) is None and _row(engine, "workloads", unique) is None
    assert status(engine, file) is None and status(engine, unique, "Workload") is None

    (workload_gone,) = [r for r in runs(engine, unique, "Workload") if r["outcome"] == "deleted"]
    (file_gone,) = [r for r in runs(engine, file, "File") if r["outcome"] == "deleted"]
    app_runs = runs(engine, unique, "App")
    assert workload_gone["finished_at"] <= file_gone["started_at"]  # replicas stopped before the file went
    # The app's last reconcile may have been picked while the file's teardown was committing (it then waits for the
    # status row that commit wakes): what matters is that it was torn down after the file, not when its task began.
    assert app_runs[-1]["outcome"] == "deleted" and app_runs[-1]["finished_at"] >= file_gone["finished_at"]
    held = [r["error"] for r in app_runs if r["outcome"] == "waiting"]
    assert held and "waiting for owned resources to be deleted first: " in held[0]
    assert f"File/{file}" in held[0] and f"Workload/{unique}" in held[0]


def test_deleting_an_owner_with_policy_orphan_leaves_what_it_owns_running_and_unowned(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = tmp_path / "app.conf"
    file = apps.file_name(unique, str(conf))
    _app(engine, unique, {str(conf): "v1\n"}, deletion_policy="orphan")
    wait_for(lambda: ready_at(engine, unique, 1, "App"), 20, "app ready")
    pids = sorted(p.pid for p in wait_for(lambda: replicas_of(unique), 20, "replica running"))

    sql(engine, "DELETE FROM apps WHERE name = :n", n=unique)
    assert status(engine, unique, "App") is None  # gone at once: nothing to tear down
    workload, config = _row(engine, "workloads", unique), _row(engine, "files", file)
    assert workload is not None and workload["owned_by"] is None  # cleared in the DELETE's own statement
    assert config is not None and config["owned_by"] is None
    wait_for(lambda: ready_at(engine, unique, workload["generation"], "Workload"), 20, "workload reconciled, unowned")
    wait_for(lambda: ready_at(engine, file, config["generation"]), 20, "file reconciled, unowned")
    assert sorted(p.pid for p in replicas_of(unique)) == pids  # the same replicas still run
    assert conf.read_text() == "v1\n"

    sql(engine, "DELETE FROM workloads WHERE name = :n", n=unique)
    sql(engine, "DELETE FROM files WHERE name = :n", n=file)
    wait_for(lambda: status(engine, file) is None, 30, "cleaned up")


def test_the_workers_database_role_writes_owned_rows_and_no_others(engine: Engine, unique: str, tmp_path: Path) -> None:
    mine, admins = f"{unique}-owned", f"{unique}-admins"
    with engine.connect() as conn, conn.begin():  # rolled back: the shared stack never sees these rows
        insert = "INSERT INTO files (name, path, content, paused, owned_by) VALUES (:n, :p, 'v1', true, :o)"
        conn.execute(text(insert), {"n": admins, "p": str(tmp_path / admins), "o": None})
        conn.execute(text(insert), {"n": mine, "p": str(tmp_path / mine), "o": f"app/{unique}"})
        conn.execute(text("SET LOCAL ROLE setpoint_worker"))
        assert conn.execute(text("SELECT count(*) FROM files WHERE name LIKE :p"), {"p": f"{unique}-%"}).scalar() == 2

        edit = "UPDATE files SET content = 'edited' WHERE name = :n"
        assert conn.execute(text(edit), {"n": admins}).rowcount == 0  # no owner: invisible to its writes
        assert conn.execute(text("DELETE FROM files WHERE name = :n"), {"n": admins}).rowcount == 0
        assert conn.execute(text(edit), {"n": mine}).rowcount == 1
        for statement in (
            "UPDATE files SET owned_by = NULL WHERE name = :n",  # nor may it disown a row to make it an admin's
            "INSERT INTO files (name, path) VALUES (:n || '-new', '/tmp/' || :n)",
            "UPDATE files SET owned_by = 'App/someone-else' WHERE name = :n",  # nor take it over for another
            "INSERT INTO files (name, path, owned_by) VALUES (:n || '-x', '/tmp/' || :n || '-x', 'App/never-was')",
        ):
            with pytest.raises(ProgrammingError, match="row-level security|a controller"), conn.begin_nested():
                conn.execute(text(statement), {"n": mine})
        conn.execute(text("RESET ROLE"))
        contents = dict(
            conn.execute(text("SELECT name, content FROM files WHERE name IN (:a, :b)"), {"a": mine, "b": admins}).all()
        )
        assert contents == {admins: "v1", mine: "edited"}
        conn.rollback()


def test_an_admins_edit_of_an_owned_row_is_put_back_within_seconds(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = tmp_path / "app.conf"
    file = apps.file_name(unique, str(conf))
    _app(engine, unique, {str(conf): "v1\n"})
    wait_for(lambda: ready_at(engine, unique, 1, "App"), 20, "app ready")

    edited = time.monotonic()
    sql(engine, "UPDATE files SET content = 'tampered' WHERE name = :n", n=file)
    wait_for(lambda: (_row(engine, "files", file) or {}).get("content") == "v1\n", 10, "the owner put its row back")
    print(f"admin's edit of an owned row -> put back: {(time.monotonic() - edited) * 1000:.0f} ms")
    row = _row(engine, "files", file)
    assert row is not None
    wait_for(lambda: ready_at(engine, file, row["generation"]), 10, "file reconciled")
    assert conf.read_text() == "v1\n"
    wait_for(lambda: ready_at(engine, unique, 1, "App"), 10, "app ready")
    # The owner's own write woke it once more, to find its rows as it wants them: no loop of reconciles.
    wait_for(lambda: _settled(engine, unique), 10, "the app's next reconcile an interval away")

    sql(engine, "DELETE FROM workloads WHERE name = :n", n=unique)  # deleted by hand: the owner makes it again
    wait_for(lambda: (r := _row(engine, "workloads", unique)) and r["owned_by"] == f"App/{unique}", 20, "made again")
    sql(engine, "DELETE FROM apps WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique, "App") is None, 30, "app torn down")


def test_an_app_never_takes_over_a_row_that_is_not_its_own(
    stack: dict[str, str], engine: Engine, unique: str, tmp_path: Path
) -> None:
    conf = tmp_path / "app.conf"
    file = apps.file_name(unique, str(conf))
    sql(
        engine,
        f"INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'mine', {SLOW})",
        n=file,
        p=str(tmp_path / "admin.conf"),
    )
    _app(engine, unique, {str(conf): "v1\n"})
    row = wait_for(lambda: (r := status(engine, unique, "App")) and r["phase"] == "Failed" and r, 20, "app failed")
    says = _ready_condition(row)["message"]
    assert f"File/{file} exists and is owned by nobody (an admin's), not App/{unique}" in says
    kept = _row(engine, "files", file)
    assert kept is not None and kept["content"] == "mine" and kept["owned_by"] is None

    sql(engine, "DELETE FROM apps WHERE name = :n", n=unique)
    wait_for(lambda: status(engine, unique, "App") is None, 30, "app torn down")
    assert _row(engine, "files", file) is not None  # deleting the app left the admin's row
    sql(engine, "DELETE FROM files WHERE name = :n", n=file)


def test_an_app_is_reconciled_and_deleted_by_a_worker_logged_in_with_the_worker_role_alone(
    fresh: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """As a deployment runs it: the worker's user is a member of setpoint_worker, nothing more."""
    admin_url = fresh["SETPOINT_DATABASE_URL"]
    user, password = f"setpoint_worker_test_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE setpoint_worker").format(
                pgsql.Identifier(user), pgsql.Literal(password)
            )
        )
    worker_url = make_url(admin_url).set(username=user, password=password).render_as_string(hide_password=False)
    engine = make_engine(admin_url)
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker({**fresh, "SETPOINT_DATABASE_URL": worker_url}, tmp_path / "worker.log")
    try:
        conf = tmp_path / "app.conf"
        _app(engine, unique, {str(conf): "v1\n"})
        wait_for(lambda: ready_at(engine, unique, 1, "App"), 30, "app ready")
        assert [_config_sha(p) for p in replicas_of(unique)] == [_sha("v1\n")]
        sql(engine, "DELETE FROM apps WHERE name = :n", n=unique)
        wait_for(lambda: status(engine, unique, "App") is None, 30, "app and what it owns torn down")
        assert replicas_of(unique) == [] and not conf.exists()
        assert "Traceback" not in worker.output()
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()
        with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(user)))
