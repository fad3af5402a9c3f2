"""The File kind never destroys what Setpoint did not make, never follows a symlink and never blocks.

Most tests drive the controller the way the worker does (worker.runtime.run_controller) on a temporary
folder; the last ones go through the real scheduler and worker, and through the database and the API's documents.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from controllers import ownership, safepath
from controllers.file import FileController, LeaveFile, RemoveFile, TakeOver, WriteContent, digest
from models import File
from models.database import libpq_url
from resources import documents
from resources.kinds import resolve
from setpoint.errors import AlreadyExists, InvalidDocument, TransientError
from setpoint.settings import Settings
from tests.conftest import ROOT, alembic, scratch_database, wait_for
from tests.helpers import ready_at, runs, sql, status, unwatched
from worker.outcome import Result
from worker.runtime import run_controller


def files(tmp_path: Path, roots: str = "") -> FileController:
    return FileController(Settings(state_dir=str(tmp_path / "state"), file_roots=roots))


def row(path: Path | str, content: str = "managed", **fields: object) -> File:
    return File(**{"name": "motd", "path": str(path), "content": content, "mode": "0644", **fields})


def reconcile(controller: FileController, desired: File, *, deleting: bool = False) -> Result:
    return run_controller(controller, desired, deleting=deleting)


def someone_elses(path: Path, content: str = "someone else's\n", mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)
    return path


# Deleting removes only what Setpoint wrote.


def test_a_written_file_is_removed_on_delete(tmp_path: Path) -> None:
    controller, target = files(tmp_path), tmp_path / "motd"
    assert reconcile(controller, row(target)).outcome == "changed"
    done = reconcile(controller, row(target), deleting=True)
    assert (done.outcome, done.actions) == ("deleted", (f"remove {target}",))
    assert not target.exists()
    assert not list((tmp_path / "state" / "files").iterdir()), "the ownership record goes with the file"


def test_a_file_changed_between_the_look_and_the_delete_is_left(tmp_path: Path) -> None:
    controller, target = files(tmp_path), tmp_path / "motd"
    reconcile(controller, row(target))
    planned = controller.teardown(row(target), controller.observe(row(target)))
    target.write_text("edited just now")
    with pytest.raises(TransientError, match="changed since Setpoint wrote it"):
        planned[0].run()
    assert target.read_text() == "edited just now"
    again = reconcile(controller, row(target), deleting=True)  # the retry says what it found
    assert again.actions == (f"left {target}: changed since Setpoint wrote it",)


def test_a_file_deleted_while_the_next_file_at_its_path_manages_it_is_left(tmp_path: Path) -> None:
    controller, target = files(tmp_path), tmp_path / "motd"
    reconcile(controller, row(target, name="old"))
    taken = reconcile(controller, row(target, name="new"))  # the same content: nothing to write, only to record
    assert taken.actions == (f"take {target} over from File 'old'",)
    done = reconcile(controller, row(target, name="old"), deleting=True)
    assert done.actions == (f"left {target}: managed by File 'new' now",)
    assert target.read_text() == "managed"
    assert reconcile(controller, row(target, name="new"), deleting=True).actions == (f"remove {target}",)
    assert not target.exists() and list((tmp_path / "state" / "files").iterdir()) == []


def test_the_ownership_record_is_private_and_names_what_was_written(tmp_path: Path) -> None:
    reconcile(files(tmp_path), row(tmp_path / "motd"))
    folder = tmp_path / "state" / "files"
    [record] = list(folder.glob("*.json"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text()) == {
        "name": "motd",
        "path": str(tmp_path / "motd"),
        "digests": [digest("managed")],
    }


def test_deleting_an_invalid_row_leaves_whatever_is_at_its_path(tmp_path: Path) -> None:
    controller = files(tmp_path)
    (tmp_path / "a").mkdir()
    theirs = someone_elses(tmp_path / "b")
    sneaky = row(f"{tmp_path}/a/../b")
    assert reconcile(controller, sneaky).outcome == "invalid"
    done = reconcile(controller, sneaky, deleting=True)
    assert done.outcome == "deleted" and done.actions[0].startswith(f"left {tmp_path}/a/../b: ")
    assert theirs.read_text() == "someone else's\n"


def test_a_row_paused_from_the_start_leaves_someone_elses_file_on_delete(tmp_path: Path) -> None:
    controller = files(tmp_path)
    theirs = someone_elses(tmp_path / "motd")
    paused = row(theirs, paused=True)
    assert reconcile(controller, paused).outcome == "paused"
    done = reconcile(controller, paused, deleting=True)
    assert done.actions == (f"left {theirs}: Setpoint did not write it",)
    assert theirs.read_text() == "someone else's\n"


def test_deleting_files_that_never_wrote_leaves_no_lock_or_record_behind(tmp_path: Path) -> None:
    controller = files(tmp_path)
    (tmp_path / "a").mkdir()
    invalid = row(f"{tmp_path}/a/../invalid", name="invalid")
    paused = row(someone_elses(tmp_path / "paused"), name="paused", paused=True)
    foreign = row(someone_elses(tmp_path / "foreign"), name="foreign")  # deleted before it ever ran
    assert reconcile(controller, invalid).outcome == "invalid"
    assert reconcile(controller, paused).outcome == "paused"
    for deleted in (invalid, paused, foreign):
        assert reconcile(controller, deleted, deleting=True).actions[0].startswith(f"left {deleted.path}: ")
    assert list((tmp_path / "state" / "files").iterdir()) == []
    assert (tmp_path / "paused").read_text() == (tmp_path / "foreign").read_text() == "someone else's\n"


@pytest.mark.parametrize(
    ("action", "fields"),
    [
        (WriteContent, ("/srv/motd", "hi", "0644")),
        (TakeOver, ("/srv/motd", digest("hi"), "old")),
        (RemoveFile, ("/srv/motd",)),
        (LeaveFile, ("/srv/motd", "why")),
    ],
)
def test_a_file_action_names_its_file_and_state_dir_or_cannot_be_made(action: type, fields: tuple) -> None:
    # Defaults would record ownership under the name '' in ./files/ of the worker's current folder.
    with pytest.raises(TypeError, match="name.*state_dir"):
        action(*fields)


def waiting_on(lock: Path) -> bool:
    """Whether some process waits for a flock on `lock` (/proc/locks lists a blocked request with '->')."""
    inode = f":{lock.stat().st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def test_a_writer_waiting_while_a_delete_removes_the_lock_takes_a_new_one_others_wait_for(tmp_path: Path) -> None:
    state, path = str(tmp_path / "state"), str(tmp_path / "motd")
    lock = ownership.location(state, path).with_suffix(".lock")
    writing, done = threading.Event(), threading.Event()

    def writer() -> None:
        with ownership.held(state, path):
            writing.set()
            done.wait(10)

    thread = threading.Thread(target=writer)
    with ownership.held(state, path):  # the tombstone's teardown, which finds no record
        thread.start()
        wait_for(lambda: waiting_on(lock), 10, "the writer waiting for the lock")
        ownership.forget(state, "gone", path)
        assert not lock.exists()
    try:
        wait_for(writing.is_set, 10, "the writer holding the lock")
        # A third comer opens the lock at its name, as `held` does: the writer holds that one, not a removed one.
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        done.set()
        thread.join(10)


def test_a_file_edited_after_setpoint_wrote_it_is_left_on_delete(tmp_path: Path) -> None:
    controller, target = files(tmp_path), tmp_path / "motd"
    reconcile(controller, row(target))
    target.write_text("hand-edited, keep me")
    done = reconcile(controller, row(target), deleting=True)
    assert done.actions == (f"left {target}: changed since Setpoint wrote it",)
    assert target.read_text() == "hand-edited, keep me"


def test_a_folder_swapped_for_a_symlink_after_the_write_does_not_lead_delete_elsewhere(tmp_path: Path) -> None:
    controller, target = files(tmp_path), tmp_path / "d" / "motd"
    reconcile(controller, row(target))
    (tmp_path / "d").rename(tmp_path / "moved")
    elsewhere = someone_elses(tmp_path / "elsewhere" / "motd", content="managed")  # the same content, even
    (tmp_path / "d").symlink_to(tmp_path / "elsewhere")
    done = reconcile(controller, row(target), deleting=True)
    assert done.outcome == "deleted" and "symlink" in done.actions[0]
    assert elsewhere.read_text() == "managed"


# Symlinks are never followed.


def test_chmod_never_follows_a_symlink(tmp_path: Path) -> None:
    controller = files(tmp_path)
    other = someone_elses(tmp_path / "other", content="managed", mode=0o600)
    link = tmp_path / "link"
    link.symlink_to(other)
    done = reconcile(controller, row(link, mode="0644"))
    assert done.outcome == "invalid" and done.error == f"path: {link} is a symlink; Setpoint never follows symlinks"
    assert stat.S_IMODE(other.stat().st_mode) == 0o600 and link.is_symlink()


def test_a_path_under_a_symlinked_folder_is_invalid_and_nothing_is_written(tmp_path: Path) -> None:
    controller = files(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    done = reconcile(controller, row(tmp_path / "via" / "sub" / "motd"))
    assert done.outcome == "invalid" and done.reason == "InvalidSpec"
    assert done.error == f"path: {tmp_path}/via is a symlink; Setpoint never follows symlinks"
    assert list((tmp_path / "real").iterdir()) == []


# Only regular files are read, and never in a way that can block.


def within(seconds: float, work: object) -> Result:
    """Run `work` in a thread and fail unless it returns within `seconds` (a blocked read would never return)."""
    done: list[Result] = []
    thread = threading.Thread(target=lambda: done.append(work()), daemon=True)  # type: ignore[operator]
    thread.start()
    thread.join(seconds)
    assert done, f"still blocked after {seconds}s"
    return done[0]


def test_a_fifo_is_invalid_at_once_and_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    try:
        done = within(5, lambda: reconcile(files(tmp_path), row(fifo)))
        assert (
            done.outcome == "invalid" and done.error == f"path: {fifo} is a FIFO; Setpoint manages regular files only"
        )
        assert within(5, lambda: reconcile(files(tmp_path), row(fifo), deleting=True)).outcome == "deleted"
    finally:  # unblock a reader, were one stuck in open()
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_device_is_invalid_and_never_read() -> None:
    done = within(5, lambda: reconcile(FileController(Settings()), row("/dev/zero")))
    assert done.outcome == "invalid" and "/dev/zero is a character device" in (done.error or "")


def test_a_folder_row_is_invalid_and_its_delete_does_nothing(tmp_path: Path) -> None:
    controller = files(tmp_path)
    (tmp_path / "dir" / "inside").mkdir(parents=True)
    assert reconcile(controller, row(tmp_path / "dir")).outcome == "invalid"
    done = reconcile(controller, row(tmp_path / "dir"), deleting=True)
    assert done.outcome == "deleted" and (tmp_path / "dir" / "inside").is_dir()


def test_a_file_over_the_read_cap_is_rewritten_without_being_read_whole(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with huge.open("wb") as handle:
        handle.truncate(safepath.MAX_READ_BYTES + 1)
    seen = safepath.inspect(str(huge))
    assert seen is not None and seen.sha256 is None and seen.size == safepath.MAX_READ_BYTES + 1
    controller = files(tmp_path)
    assert reconcile(controller, row(huge)).outcome == "changed" and huge.read_text() == "managed"
    too_big = row(huge, content="x" * (safepath.MAX_READ_BYTES + 1))
    assert reconcile(controller, too_big).error == "content: must be at most 16 MiB"


# An interrupted write leaves at most one temporary file, which the next write reuses and delete removes.

WRITER = """
import sys
from controllers.file import FileController, LeaveFile, RemoveFile, TakeOver, WriteContent, digest
from models import File
from setpoint.settings import Settings
from worker.runtime import run_controller
controller = FileController(Settings(state_dir=sys.argv[2]))
for i in range(1000):  # each run's content starts with its own digit, so the test sees its write under way
    content = f"{sys.argv[3]}{i:08d}" * 1_000_000
    run_controller(controller, File(name="big", path=sys.argv[1], content=content), deleting=False)
"""


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".big.")) if folder.exists() else []


def writing(folder: Path, run: int) -> bool:
    """Whether run `run` of the writer has a temporary file with its content in `folder` right now."""
    for temp in temporaries(folder):
        try:
            with temp.open("rb") as handle:
                if handle.read(1) == str(run).encode():
                    return True
        except FileNotFoundError:
            continue
    return False


def test_interrupted_writes_leave_one_temporary_file_which_delete_removes(tmp_path: Path) -> None:
    target = tmp_path / "out" / "big"
    for run in range(1, 4):
        argv = [sys.executable, "-c", WRITER, str(target), str(tmp_path / "state"), str(run)]
        writer = subprocess.Popen(argv, cwd=ROOT)
        wait_for(lambda: writing(target.parent, run), 30, f"write {run} under way")  # noqa: B023
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert len(temporaries(target.parent)) <= 1, temporaries(target.parent)
    controller = files(tmp_path)
    big = row(target, content="small now")
    assert reconcile(controller, big).outcome == "changed"
    assert temporaries(target.parent) == [] and target.read_text() == "small now"
    os.close(os.open(target.parent / safepath.temp_name(str(target)), os.O_CREAT | os.O_WRONLY, 0o600))
    assert reconcile(controller, big, deleting=True).actions == (f"remove {target}",)
    assert list(target.parent.iterdir()) == []


# SETPOINT_FILE_ROOTS: the folders Files may live under.


def test_a_path_outside_every_root_is_invalid_and_untouched(tmp_path: Path) -> None:
    roots = f"{tmp_path}/etc,{tmp_path}/srv"
    outside = tmp_path / "etc2" / "motd"
    done = reconcile(files(tmp_path, roots), row(outside))
    assert done.outcome == "invalid" and done.reason == "PathNotAllowed"
    assert "must be under one of" in (done.error or "")
    assert not outside.parent.exists()
    assert reconcile(files(tmp_path, roots), row(tmp_path / "srv" / "app" / "motd")).outcome == "changed"


def test_delete_never_removes_outside_the_roots(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "motd"
    reconcile(files(tmp_path), row(target))  # written while any path was allowed
    done = reconcile(files(tmp_path, f"{tmp_path}/srv"), row(target), deleting=True)
    assert done.outcome == "deleted" and "must be under one of" in done.actions[0]
    assert target.read_text() == "managed"


@pytest.mark.parametrize(
    ("path", "root", "inside"),
    [("/etc/motd", "/etc", True), ("/etc2/motd", "/etc", False), ("/etc", "/etc", False), ("/x", "/", True)],
)
def test_roots_compare_whole_folders(path: str, root: str, inside: bool) -> None:
    assert safepath.under(path, root) is inside


def test_a_relative_root_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="(?s)file_roots.*absolute path without '.' or '..' parts, got 'etc'"):
        Settings(file_roots="/srv, etc")
    assert FileController(Settings(file_roots=" /srv/, /etc//app ")).roots == ("/srv", "/etc/app")


# One File per path, in one spelling: the database refuses a second.


def test_a_second_file_at_the_same_path_is_refused(engine: Engine, unique: str, tmp_path: Path) -> None:
    path = str(tmp_path / "motd")
    unwatched(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", unique, p=path)
    with pytest.raises(IntegrityError, match="uq_files_path"):
        sql(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", n=f"{unique}-2", p=path)
    for spelling in (f"{tmp_path}//motd", f"{tmp_path}/./motd", f"{tmp_path}/x/../motd", f"{path}/"):
        with pytest.raises(IntegrityError, match="ck_files_path_normalized"):
            sql(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", n=f"{unique}-3", p=spelling)
    assert status(engine, f"{unique}-2") is None and status(engine, f"{unique}-3") is None


def test_the_api_names_spec_path_when_the_path_is_taken(engine: Engine, unique: str, tmp_path: Path) -> None:
    kind, path = resolve("file"), str(tmp_path / "motd")
    unwatched(engine, "INSERT INTO files (name, path) VALUES (:n, :p)", unique, p=path)
    with pytest.raises(InvalidDocument) as refused:
        documents.create(engine, kind, f"{unique}-2", {"path": path})
    assert refused.value.field == "spec.path"
    assert str(refused.value) == (
        f"File/{unique}-2 (request body): field 'spec.path': expected a path no other File manages "
        "(constraint uq_files_path)"
    )
    with pytest.raises(AlreadyExists):  # the name taken is still told apart
        documents.create(engine, kind, unique, {"path": str(tmp_path / "other")})
    with pytest.raises(InvalidDocument, match="spec.path.*normalized absolute path"):
        documents.create(engine, kind, f"{unique}-3", {"path": f"{tmp_path}/x/../motd"})
    with pytest.raises(InvalidDocument, match="spec.path.*at most 2048 bytes"):
        documents.create(engine, kind, f"{unique}-3", {"path": "/" + "é" * 1500})


# Through the real scheduler and worker.


def insert(engine: Engine, name: str, path: Path | str, content: str = "managed", **extra: object) -> None:
    columns = ", ".join(["name", "path", "content", *extra])
    values = ", ".join([":name", ":path", ":content", *(f":{k}" for k in extra)])
    sql(engine, f"INSERT INTO files ({columns}) VALUES ({values})", name=name, path=str(path), content=content, **extra)


def phase(engine: Engine, name: str, wanted: str) -> dict | None:
    found = status(engine, name)
    return found if found and found["phase"] == wanted and found["observed_generation"] == found["generation"] else None


def test_delete_removes_only_what_setpoint_wrote(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    managed, edited = tmp_path / "managed", tmp_path / "edited"
    theirs = someone_elses(tmp_path / "theirs")
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    hidden = someone_elses(tmp_path / "real" / "motd")
    insert(engine, f"{unique}-managed", managed)
    insert(engine, f"{unique}-edited", edited)
    insert(engine, f"{unique}-paused", theirs, paused=True)
    insert(engine, f"{unique}-invalid", tmp_path / "via" / "motd")
    wait_for(lambda: ready_at(engine, f"{unique}-managed", 1), 20, "managed file ready")
    wait_for(lambda: ready_at(engine, f"{unique}-edited", 1), 20, "edited file ready")
    wait_for(lambda: phase(engine, f"{unique}-paused", "Drifted"), 20, "paused row observed")
    invalid = wait_for(lambda: phase(engine, f"{unique}-invalid", "Invalid"), 20, "symlinked row invalid")
    assert "is a symlink; Setpoint never follows symlinks" in invalid["last_error"]
    edited.write_text("edited by a person")
    sql(engine, "DELETE FROM files WHERE name LIKE :prefix", prefix=f"{unique}-%")
    for suffix in ("managed", "edited", "paused", "invalid"):
        wait_for(lambda: status(engine, f"{unique}-{suffix}") is None, 20, f"{suffix} deleted")  # noqa: B023
    assert not managed.exists()
    assert edited.read_text() == "edited by a person"
    assert theirs.read_text() == hidden.read_text() == "someone else's\n"
    said = {suffix: runs(engine, f"{unique}-{suffix}")[-1]["actions"] for suffix in ("edited", "paused", "invalid")}
    assert said["edited"] == [f"left {edited}: changed since Setpoint wrote it"]
    assert said["paused"] == [f"left {theirs}: Setpoint did not write it"]
    assert said["invalid"][0].startswith(f"left {tmp_path}/via/motd: path: {tmp_path}/via is a symlink")


def test_a_fifo_or_a_device_is_invalid_at_once_and_a_folder_row_can_be_deleted_and_its_name_reused(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir").mkdir()
    insert(engine, f"{unique}-fifo", tmp_path / "pipe")
    insert(engine, f"{unique}-zero", "/dev/zero")
    insert(engine, unique, tmp_path / "dir")
    # The worker's time limit is 5 s here: a blocked read would end in a failure after it, never in Invalid.
    for name, words in (
        (f"{unique}-fifo", "is a FIFO"),
        (f"{unique}-zero", "is a character device"),
        (unique, "is a folder"),
    ):
        row = wait_for(lambda: phase(engine, name, "Invalid"), 10, f"{name} invalid")  # noqa: B023
        assert words in row["last_error"] and runs(engine, name)[-1]["duration_ms"] < 1000
    sql(engine, "DELETE FROM files WHERE name LIKE :prefix", prefix=f"{unique}%")
    wait_for(lambda: status(engine, unique) is None, 20, "the folder row's delete done")
    insert(engine, unique, tmp_path / "dir" / "motd")
    wait_for(lambda: ready_at(engine, unique, 1), 20, "its name reused")
    assert (tmp_path / "dir" / "motd").read_text() == "managed"
    wait_for(lambda: status(engine, f"{unique}-zero") is None, 20, "/dev/zero's row deleted, its path free again")


def test_the_upgrade_names_the_rows_that_share_a_path_and_changes_nothing(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], "paths", migrate=False) as url:
        alembic("upgrade", "0003", database_url=url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("INSERT INTO files (name, path) VALUES ('one', '/srv/motd'), ('two', '/srv/motd')")
        env = {**os.environ, "SETPOINT_DATABASE_URL": url}
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode != 0
        assert "files.path must be unique" in done.stderr and "/srv/motd (one, two)" in done.stderr
        assert "0003" in alembic("current", database_url=url).stdout
