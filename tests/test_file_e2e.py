"""The File kind end to end: SQL in, files on disk out, through a real scheduler and Celery worker."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from tests.conftest import wait_for
from tests.helpers import ready_at, runs, sql, status, view


def insert_file(engine: Engine, name: str, path: Path, content: str, **extra: object) -> None:
    columns = ", ".join(["name", "path", "content", *extra])
    values = ", ".join([":name", ":path", ":content", *(f":{k}" for k in extra)])
    sql(
        engine,
        f"INSERT INTO files ({columns}) VALUES ({values})",
        name=name,
        path=str(path),
        content=content,
        **extra,
    )


def test_sql_insert_creates_the_file(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    insert_file(engine, unique, target, "hello\n", mode="0600")
    row = wait_for(lambda: ready_at(engine, unique, 1), 20, "file ready")
    assert target.read_text() == "hello\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert row["phase"] == "Ready"
    assert {c["type"]: c["status"] for c in row["conditions"]} == {"Ready": "True", "Synced": "True"}
    assert view(engine, unique)["observed_generation"] == 1  # type: ignore[index]
    assert [r["outcome"] for r in runs(engine, unique)][0] == "changed"


def test_sql_update_bumps_generation_and_is_applied(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    insert_file(engine, unique, target, "one")
    wait_for(lambda: ready_at(engine, unique, 1), 20, "first generation")
    sql(engine, "UPDATE files SET content = 'two' WHERE name = :name", name=unique)
    row = wait_for(lambda: ready_at(engine, unique, 2), 20, "second generation ready")
    assert target.read_text() == "two"
    assert row["generation"] == 2


def test_out_of_band_edit_is_healed(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    insert_file(engine, unique, target, "desired", interval_seconds=1)
    wait_for(lambda: ready_at(engine, unique, 1), 20, "file ready")
    target.write_text("hot-fixed by hand at 2 a.m.")
    os.chmod(target, 0o777)
    wait_for(lambda: target.read_text() == "desired", 15, "content healed")
    wait_for(lambda: stat.S_IMODE(target.stat().st_mode) == 0o644, 15, "mode healed")
    wait_for(
        lambda: len([r for r in runs(engine, unique) if r["outcome"] == "changed"]) >= 2,
        15,
        "the heal shown in run history as a change",
    )


def test_relative_path_is_refused_by_the_database(engine: Engine, unique: str) -> None:
    try:
        insert_file(engine, unique, Path("etc/motd"), "x")
    except IntegrityError as error:
        assert "ck_files_path_absolute" in str(error)
    else:
        raise AssertionError("a relative path was accepted")
    assert status(engine, unique) is None


def test_invalid_path_is_reported_in_status_and_nothing_is_written(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sub").symlink_to(tmp_path / "elsewhere")
    insert_file(engine, unique, tmp_path / "sub" / "escape", "x")
    row = wait_for(lambda: (s := status(engine, unique)) and s["phase"] == "Invalid" and s, 20, "invalid")
    ready = next(c for c in row["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "path" in ready["message"] and "symlink" in ready["message"]
    assert not (tmp_path / "elsewhere" / "escape").exists()
    assert row["next_reconcile_at"] is None, "an invalid spec is not retried until the row changes"
    # Fixing the row is all it takes.
    sql(engine, "UPDATE files SET path = :path WHERE name = :name", path=str(tmp_path / "fixed"), name=unique)
    wait_for(lambda: ready_at(engine, unique, 2), 20, "fixed row ready")
    assert (tmp_path / "fixed").read_text() == "x"


def test_sql_delete_removes_the_file(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    insert_file(engine, unique, target, "bye")
    wait_for(lambda: ready_at(engine, unique, 1), 20, "file ready")
    sql(engine, "DELETE FROM files WHERE name = :name", name=unique)
    wait_for(lambda: not target.exists(), 20, "file removed")
    wait_for(lambda: status(engine, unique) is None, 20, "tombstone cleared")
    assert runs(engine, unique)[-1]["outcome"] == "deleted"


def test_orphan_policy_keeps_the_file(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    insert_file(engine, unique, target, "keep me", deletion_policy="orphan")
    wait_for(lambda: ready_at(engine, unique, 1), 20, "file ready")
    sql(engine, "DELETE FROM files WHERE name = :name", name=unique)
    assert status(engine, unique) is None
    assert target.read_text() == "keep me"


def test_paused_resource_reports_drift_and_is_left_alone(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    target = tmp_path / "motd"
    insert_file(engine, unique, target, "desired", interval_seconds=1)
    wait_for(lambda: ready_at(engine, unique, 1), 20, "file ready")
    sql(engine, "UPDATE files SET paused = true WHERE name = :name", name=unique)
    wait_for(lambda: ready_at(engine, unique, 2), 20, "pause observed")
    target.write_text("edited while paused")
    row = wait_for(lambda: (s := status(engine, unique)) and s["phase"] == "Drifted" and s, 15, "drift reported")
    assert target.read_text() == "edited while paused"
    assert row["drift"] and "write" in row["drift"][0]["change"]
    assert not row["ready"]


def test_admin_can_ask_for_a_reconcile_at_once(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    insert_file(engine, unique, target, "desired", interval_seconds=3600)
    wait_for(lambda: ready_at(engine, unique, 1), 20, "file ready")
    target.write_text("tampered")
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE kind = 'File' AND name = :n", n=unique)
    wait_for(lambda: target.read_text() == "desired", 10, "healed at once, not in an hour")


def test_run_history_names_the_worker_and_the_celery_task(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    insert_file(engine, unique, tmp_path / "f", "x")
    wait_for(lambda: ready_at(engine, unique, 1), 20, "file ready")
    run = wait_for(lambda: runs(engine, unique), 10, "run recorded")[0]
    assert run["worker"].startswith("w1@") and len(run["task_id"]) == 36
    assert run["generation"] == 1 and run["finished_at"] >= run["started_at"] and run["duration_ms"] >= 0
