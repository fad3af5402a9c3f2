"""Healing at the speed of the event: a watched File or Workload is reconciled the moment it changes, long
before its interval (an hour here), through real scheduler and worker processes and real files."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from controllers import processes, shim, workload
from models.database import make_engine
from setpoint.settings import Settings
from tests import helpers
from tests.conftest import (
    Process,
    replicas_of,
    scratch_database,
    stack_env,
    start_scheduler,
    start_worker,
    stop_replicas,
    wait_for,
)
from tests.helpers import ready_at, runs, sql
from tests.test_metrics import metrics_port, sample, scrape
from worker import metrics, registry, watcher, watches
from worker.controller import Watch

HOUR = 3600


class Stack:
    """A scheduler and a worker of this module's own (the watcher's log lines are DEBUG)."""

    def __init__(self, engine: Engine, worker: Process, state_dir: Path) -> None:
        self.engine = engine
        self.worker = worker
        self.state_dir = state_dir

    def watching(self, name: str, folder: Path) -> bool:
        """Whether the worker's watcher has said it watches resource `name` in `folder`."""
        return f"resource={name} folder={folder}" in _lines(self.worker.output(), "setpoint.watch watching ")

    def unwatching(self, name: str, folder: Path) -> bool:
        return f"resource={name} folder={folder}" in _lines(self.worker.output(), "setpoint.watch unwatching ")


def _lines(output: str, marker: str) -> str:
    return "\n".join(line for line in output.splitlines() if marker in line)


@contextlib.contextmanager
def _stack(servers: tuple[str, str], folder: Path, **overrides: str) -> Iterator[Stack]:
    admin, broker = servers
    with scratch_database(admin, "watch") as url:
        env = stack_env(url, broker, folder / "state", SETPOINT_LOG_LEVEL="DEBUG", **overrides)
        scheduler = start_scheduler(env, folder / "scheduler.log")
        worker = start_worker(env, folder / "worker.log")
        engine = make_engine(url)
        try:
            wait_for(lambda: "ready." in worker.output() or worker.popen.poll() is not None, 60, "worker ready")
            assert worker.popen.poll() is None, worker.output()
            yield Stack(engine, worker, folder / "state")
        finally:
            scheduler.stop()
            worker.stop()
            engine.dispose()
            stop_replicas(folder / "state")


@pytest.fixture(scope="module")
def watched(servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _stack(servers, tmp_path_factory.mktemp("watch")) as stack:
        yield stack


def managed_file(stack: Stack, path: Path, content: str = "desired\n", interval_s: int = HOUR) -> str:
    """A File, reconciled once, watched and settled; returns its name."""
    name = f"w-{uuid.uuid4().hex[:10]}"
    sql(
        stack.engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, :c, :i)",
        n=name,
        p=str(path),
        c=content,
        i=interval_s,
    )
    wait_for(lambda: ready_at(stack.engine, name, 1), 20, "file written")
    wait_for(lambda: stack.watching(name, path.parent), 10, "file watched")
    wait_for(lambda: settled(stack, name), 10, "no reconcile pending, none for half a second")
    return name


def test_an_edited_file_is_healed_at_once_not_at_its_interval(watched: Stack, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    managed_file(watched, target)
    target.write_text("hot fix at 2 a.m.\n")
    wait_for(lambda: target.read_text() == "desired\n", 10, "content healed")


def test_a_chmod_is_healed_at_once(watched: Stack, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    managed_file(watched, target)
    os.chmod(target, 0o777)
    wait_for(lambda: target.stat().st_mode & 0o777 == 0o644, 10, "mode healed")


def settled(stack: Stack, name: str) -> bool:
    return helpers.settled(stack.engine, name)


def test_a_file_replaced_by_rename_or_deleted_is_healed_at_once(watched: Stack, tmp_path: Path) -> None:
    target = tmp_path / "app.conf"
    managed_file(watched, target)
    edited = tmp_path / ".app.conf.swp"
    edited.write_text("an editor's save\n")
    os.replace(edited, target)  # how editors save: a new file renamed over the old one
    wait_for(lambda: target.read_text() == "desired\n", 10, "renamed-over file healed")
    target.unlink()
    wait_for(lambda: target.exists() and target.read_text() == "desired\n", 10, "deleted file back")


def test_a_deleted_folder_is_healed_at_once_and_watched_again(watched: Stack, tmp_path: Path) -> None:
    target = tmp_path / "app" / "app.conf"
    target.parent.mkdir()
    managed_file(watched, target)
    shutil.rmtree(target.parent)
    wait_for(lambda: target.exists() and target.read_text() == "desired\n", 10, "folder and file back")
    target.write_text("tampered in the new folder\n")  # the watch followed the folder's new incarnation
    wait_for(lambda: target.read_text() == "desired\n", 10, "file in the new folder healed")


def test_a_renamed_folder_is_healed_at_once_and_watched_again(watched: Stack, tmp_path: Path) -> None:
    """The folder's inotify watch follows it to its new name: its own rename (IN_MOVE_SELF) must tell."""
    target = tmp_path / "a" / "b" / "app.conf"
    target.parent.mkdir(parents=True)
    managed_file(watched, target)
    os.rename(target.parent, tmp_path / "a" / "c")
    wait_for(lambda: target.exists() and target.read_text() == "desired\n", 10, "folder and file back")
    target.write_text("tampered in the new folder\n")
    wait_for(lambda: target.read_text() == "desired\n", 10, "file in the new folder healed")


def test_a_renamed_grandparent_folder_is_healed_at_once(watched: Stack, tmp_path: Path) -> None:
    """No event reaches the watch on the file's folder, which moves along: the folders above guard it."""
    target = tmp_path / "a" / "b" / "app.conf"
    target.parent.mkdir(parents=True)
    managed_file(watched, target)
    os.rename(tmp_path / "a", tmp_path / "d")
    wait_for(lambda: target.exists() and target.read_text() == "desired\n", 10, "folders and file back")
    target.write_text("tampered in the new folder\n")
    wait_for(lambda: target.read_text() == "desired\n", 10, "file in the new folder healed")
    (tmp_path / "d" / "b" / "app.conf").write_text("not ours any more\n")  # the old watch is gone with it


def test_heal_latency_of_twenty_tampers(watched: Stack, tmp_path: Path) -> None:
    """Reports the median tamper-to-healed time (from the tamper to the healed file's mtime, so the test's own
    polling does not count); each heal must be far inside the hour's interval."""
    target = tmp_path / "motd"
    managed_file(watched, target)
    took = []
    for i in range(20):
        tampered_at = time.time()
        target.write_text(f"tamper {i}\n")
        wait_for(lambda: target.read_text() == "desired\n", 10, f"tamper {i} healed")
        took.append(target.stat().st_mtime - tampered_at)
    took.sort()
    print(f"tamper -> healed over 20: p50 {statistics.median(took) * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms")
    assert statistics.median(took) < 1.0, took


def test_a_burst_of_writes_gives_a_bounded_number_of_reconciles(watched: Stack, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    name = managed_file(watched, target)
    before = len(runs(watched.engine, name))
    for i in range(1000):
        target.write_text(f"write {i}\n")
    wait_for(lambda: target.read_text() == "desired\n", 10, "file right after the burst")
    # Settled: the reconcile that healed it, then the one its own write caused, found nothing to do.
    wait_for(lambda: runs(watched.engine, name)[-1]["outcome"] == "noop", 10, "a last no-op run")
    reconciles = len(runs(watched.engine, name)) - before
    print(f"1000 writes in a burst gave {reconciles} reconciles")
    assert 1 <= reconciles <= 40
    assert target.read_text() == "desired\n"


def test_a_file_moved_or_deleted_leaves_no_watch_behind(watched: Stack, tmp_path: Path) -> None:
    old, new = tmp_path / "old" / "motd", tmp_path / "new" / "motd"
    old.parent.mkdir()
    new.parent.mkdir()
    name = managed_file(watched, old)
    sql(watched.engine, "UPDATE files SET path = :p WHERE name = :n", p=str(new), n=name)
    wait_for(lambda: ready_at(watched.engine, name, 2), 20, "moved")
    wait_for(lambda: watched.unwatching(name, old.parent), 10, "old folder no longer watched")
    wait_for(lambda: watched.watching(name, new.parent), 10, "new folder watched")
    new.write_text("tampered\n")
    wait_for(lambda: new.read_text() == "desired\n", 10, "new path healed")
    sql(watched.engine, "DELETE FROM files WHERE name = :n", n=name)
    wait_for(lambda: watched.unwatching(name, new.parent), 20, "deleted file no longer watched")


def test_a_killed_replica_is_replaced_at_once_not_at_its_interval(watched: Stack) -> None:
    name = f"w-{uuid.uuid4().hex[:10]}"
    sql(
        watched.engine,
        "INSERT INTO workloads (name, command, replicas, interval_seconds) VALUES (:n, 'sleep 300', 2, :i)",
        n=name,
        i=HOUR,
    )
    wait_for(lambda: ready_at(watched.engine, name, 1, "Workload"), 30, "two replicas running")
    folder = (watched.state_dir / "workloads" / name).resolve()
    wait_for(lambda: watched.watching(name, folder), 10, "replicas watched")
    first = wait_for(lambda: len(replicas_of(name)) == 2 and replicas_of(name), 10, "two processes")
    victim = first[0].pid
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)  # lightning strikes
    wait_for(
        lambda: len(live := replicas_of(name)) == 2 and victim not in {p.pid for p in live}, 10, "replica replaced"
    )
    print(f"SIGKILL -> replacement seen running: {(time.monotonic() - killed_at) * 1000:.0f} ms (50 ms polls)")


def test_with_watching_off_a_tampered_file_waits_for_its_interval(servers: tuple[str, str], tmp_path: Path) -> None:
    with _stack(servers, tmp_path, SETPOINT_WATCH="false") as stack:
        target = tmp_path / "motd"
        name = f"w-{uuid.uuid4().hex[:10]}"
        sql(
            stack.engine,
            "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'desired', 6)",
            n=name,
            p=str(target),
        )
        wait_for(lambda: ready_at(stack.engine, name, 1), 20, "file written")
        written_at = time.monotonic()  # its next reconcile is 6 s (less 10 % jitter at most) after this
        target.write_text("tampered")
        wait_for(lambda: target.read_text() == "desired", 15, "healed at the interval")
        assert time.monotonic() - written_at > 4.0, "healed before its interval although watching is off"
        assert "watching is off" in stack.worker.output()


def test_the_watcher_needs_no_right_the_worker_role_lacks(watched: Stack, tmp_path: Path) -> None:
    target = tmp_path / "motd"
    name = managed_file(watched, target)
    node = socket.gethostname()
    with watched.engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE setpoint_worker"))
        found = watches.load(conn, node, registry.controllers(), {})
        marked = watches.mark_due(conn, node, {("File", name)})
        due = conn.execute(text("SELECT next_reconcile_at <= now() FROM statuses WHERE name = :n"), {"n": name})
        assert due.scalar() is True
    assert found[("File", name)].watches == (Watch(str(target)),)
    assert marked.due == {("File", name)} and not marked.running


def test_a_crash_looping_replica_still_backs_off_when_watched(watched: Stack) -> None:
    """Each exit is an event, but the restarts still wait out the doubling back-off (0.5 s, 1 s, 2 s here)."""
    name = f"w-{uuid.uuid4().hex[:10]}"
    sql(
        watched.engine,
        "INSERT INTO workloads (name, command, replicas, interval_seconds) VALUES (:n, 'sh -c \"exit 3\"', 1, :i)",
        n=name,
        i=HOUR,
    )

    def starts() -> list:
        found = runs(watched.engine, name, "Workload")
        return [r["started_at"] for r in found if any("start replica" in a for a in r["actions"])]

    seen = wait_for(lambda: len(s := starts()) >= 4 and s, 30, "four starts")
    gaps = [(b - a).total_seconds() for a, b in zip(seen, seen[1:], strict=False)]
    assert all(gap >= 0.5 * 2**k for k, gap in enumerate(gaps[:3])), f"restarts must wait out the back-off: {gaps}"


def test_a_replica_that_died_while_its_worker_was_down_is_replaced_when_it_is_back(
    fresh: dict, tmp_path: Path, unique: str
) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    replacement = None
    try:
        sql(
            engine,
            "INSERT INTO workloads (name, command, replicas, interval_seconds) VALUES (:n, 'sleep 300', 2, :i)",
            n=unique,
            i=HOUR,
        )
        wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "two replicas running")
        first = wait_for(lambda: len(found := replicas_of(unique)) == 2 and found, 10, "two processes")
        worker.stop()
        os.kill(first[0].pid, signal.SIGKILL)  # nobody watches now: the shim records the exit all the same
        replacement = start_worker(fresh, tmp_path / "replacement.log", name="w2")
        wait_for(
            lambda: len(live := replicas_of(unique)) == 2 and first[0].pid not in {p.pid for p in live},
            20,
            "replica replaced once the worker is back, not an hour later",
        )
    finally:
        if replacement:
            replacement.stop()
        scheduler.stop()
        engine.dispose()


def test_beyond_the_folder_limit_watching_is_degraded_once_and_healing_waits_for_the_interval(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    with _stack(servers, tmp_path, SETPOINT_WATCH_MAX_FOLDERS="1") as stack:
        folders = [tmp_path / f"app{i}" for i in range(3)]
        for folder in folders:
            folder.mkdir()
        managed_file(stack, folders[0] / "conf")
        for folder in folders[1:]:
            name = f"w-{uuid.uuid4().hex[:10]}"
            sql(
                stack.engine,
                "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'desired\n', 5)",
                n=name,
                p=str(folder / "conf"),
            )
            wait_for(lambda n=name: ready_at(stack.engine, n, 1), 20, "file written")
        wait_for(lambda: "watching degraded" in stack.worker.output(), 10, "degradation reported")
        unwatched = folders[1] / "conf"
        unwatched.write_text("tampered\n")
        wait_for(lambda: unwatched.read_text() == "desired\n", 15, "healed at its interval all the same")
        assert stack.worker.output().count("watching degraded") == 1, "said once, not at every look"
        samples = scrape(metrics_port(stack.worker))
        assert sample(samples, "setpoint_watch_degraded", node=socket.gethostname()) == 1
        assert sample(samples, "setpoint_watched_folders", node=socket.gethostname()) == 1
        (folders[0] / "conf").write_text("tampered\n")  # the folder within the limit is watched still
        wait_for(lambda: (folders[0] / "conf").read_text() == "desired\n", 10, "watched file healed")


def _exit_recorded_at(folder: Path, deadline_s: float) -> float:
    """When the shim says its replica ended, read from its exit record as soon as it appears (the next reconcile
    forgets it, so this looks every 2 ms rather than at wait_for's 50 ms)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for record in folder.glob("*.exit"):
            with contextlib.suppress(OSError, ValueError):
                return float(json.loads(record.read_text())["ended_at"])
        time.sleep(0.002)
    raise AssertionError(f"no exit record in {folder} within {deadline_s}s")


def test_a_replica_killed_past_its_crash_window_is_replaced_at_once(watched: Stack) -> None:
    """A replica that ran past the crash window (10 s) is no crash loop: its SIGKILL is replaced at once. Prints
    the chain's timings from the kill: the shim's exit record, the reconcile that noticed it, the replacement
    running (its record's time, written by its shim once it runs: the test's own polling does not count)."""
    name = f"w-{uuid.uuid4().hex[:10]}"
    sql(
        watched.engine,
        "INSERT INTO workloads (name, command, replicas, interval_seconds) VALUES (:n, 'sleep 300', 1, :i)",
        n=name,
        i=HOUR,
    )
    wait_for(lambda: ready_at(watched.engine, name, 1, "Workload"), 30, "the replica running")
    folder = (watched.state_dir / "workloads" / name).resolve()
    wait_for(lambda: watched.watching(name, folder), 10, "replicas watched")
    (victim,) = wait_for(lambda: len(found := replicas_of(name)) == 1 and found, 10, "one process")
    window = workload.CRASH_WINDOW_S + 0.5
    wait_for(lambda: time.time() - victim.create_time() > window, window + 5, "the replica past its crash window")
    wait_for(lambda: settled(watched, name), 10, "no reconcile pending")
    before = len(runs(watched.engine, name, "Workload"))
    killed_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    ended_at = _exit_recorded_at(folder, deadline_s=10)
    (replacement,) = wait_for(
        lambda: len(live := replicas_of(name)) == 1 and live[0].pid != victim.pid and live, 10, "replica replaced"
    )
    (record,) = [r for r in folder.glob("*.json") if json.loads(r.read_text())["pid"] == replacement.pid]
    took_s = record.stat().st_mtime - killed_at  # the shim writes the record once the process runs
    noticed = wait_for(lambda: (r := runs(watched.engine, name, "Workload")[before:]) and r[0], 10, "its run")
    print(
        f"SIGKILL -> exit recorded {(ended_at - killed_at) * 1000:.0f} ms, reconcile started "
        f"{(noticed['started_at'].timestamp() - killed_at) * 1000:.0f} ms, replacement running "
        f"{took_s * 1000:.0f} ms"
    )
    assert any("start replica 0" in action for action in noticed["actions"]), noticed
    # What a user reads: the dead replica is not counted as running, and the replacement is, by its pid.
    seen = wait_for(lambda: ready_at(watched.engine, name, 1, "Workload"), 10, "ready again")
    alive = [r["pid"] for r in seen["observed"]["replicas"] if r["alive"]]
    assert alive == [replacement.pid], seen["observed"]
    assert took_s < 2.0, f"replaced {took_s:.3f} s after the kill"


def test_an_exit_is_recorded_at_once_though_an_escaped_child_holds_the_log_pipe(tmp_path: Path) -> None:
    """The exit record is what the watcher waits for: a child that left the replica's process group (and so
    outlives it, holding its output pipe) must not hold it up for the log pump's drain (2 s)."""
    name = f"w-{uuid.uuid4().hex[:10]}"
    state = str(tmp_path / "state")
    command = "setsid sleep 60 & exec sleep 300"  # run by /bin/sh -c
    replica = processes.start(state, name, 0, "v1", command, {"SETPOINT_WORKLOAD": name}, None, 0)
    try:
        wait_for(lambda: len(replicas_of(name)) == 2, 10, "the replica and its escaped child")
        killed_at = time.time()
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGKILL)
        ended_at = _exit_recorded_at(Path(replica.record).parent, deadline_s=10)
        recorded_s = os.stat(processes.exit_file(Path(replica.record))).st_mtime - killed_at
        print(f"SIGKILL -> exit recorded {recorded_s * 1000:.0f} ms with the pipe held")
        assert ended_at - killed_at < 0.1
        assert recorded_s < shim.PUMP_DRAIN_S / 2, f"exit recorded {recorded_s:.3f} s after the kill"
    finally:
        for process in replicas_of(name):
            with contextlib.suppress(OSError):
                process.kill()


def test_a_dead_observer_is_said_once_and_replaced(watched: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """watchdog's observer thread gone, events are lost: the log says watching is degraded, once, and the watcher
    starts a new observer within a second and looks at every resource it watches (what changed meanwhile)."""
    url = watched.engine.url.render_as_string(hide_password=False)
    node = f"observer-{uuid.uuid4().hex[:8]}"  # a node of its own: this watcher marks nothing of the stack's
    keeper = watcher.Watcher(Settings(database_url=url, node=node))
    caplog.set_level(logging.INFO, logger="setpoint.watch")
    keeper.start()
    try:
        first = keeper._folders.observer
        first.stop()  # as if it died
        wait_for(lambda: "watching restored" in caplog.text, 5, "a new observer")
        assert keeper._folders.observer is not first and keeper._folders.observer.is_alive()
        assert caplog.text.count("watching degraded") == 1, caplog.text
        gauge = {s.labels["node"]: s.value for s in next(iter(metrics.WATCH_DEGRADED.collect())).samples}
        assert gauge[node] == 0, "whole again"
    finally:
        keeper.stop()
