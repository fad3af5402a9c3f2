"""Replicas are contained: they cannot read Setpoint's credentials, run as SETPOINT_RUN_AS's user, and what
Setpoint keeps of them (records, logs, health checks) stays private, bounded and free of secrets."""

from __future__ import annotations

import contextlib
import http.server
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine

from controllers import health, identity, processes
from controllers.shim import exit_file
from controllers.workload import WorkloadController
from models import Workload
from models.database import make_engine
from setpoint.settings import Settings
from tests.conftest import replicas_of, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, status
from tests.test_workloads import insert_workload

NOBODY = 65534


def environ(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_bytes().decode().split("\0") if line)
    return {name: value for name, _, value in pairs}


def test_replicas_cannot_read_the_workers_credentials(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    # The shell is the replica: its parent is the shim, which a replica could read as /proc/$PPID/environ.
    command = f"cat /proc/$PPID/environ > {tmp_path}/parent; cat /proc/$$/environ > {tmp_path}/own; exec sleep 300"
    insert_workload(engine, unique, command, 1, env='{"GREETING": "hello"}')
    wait_for(lambda: any(p.cmdline() == ["sleep", "300"] for p in replicas_of(unique)), 30, "the replica running")
    parent, own = environ(tmp_path / "parent"), environ(tmp_path / "own")
    assert parent and own["GREETING"] == "hello"
    for env in (parent, own):
        text = "\n".join(f"{k}={v}" for k, v in env.items())
        assert stack["SETPOINT_DATABASE_URL"] not in text and stack["SETPOINT_BROKER_URL"] not in text
    assert not [k for k in parent if k.startswith("SETPOINT_")], parent
    assert {k for k in own if k.startswith("SETPOINT_")} == {"SETPOINT_WORKLOAD", "SETPOINT_REPLICA"}


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_records_logs_and_folders_are_private_whatever_the_umask(tmp_path: Path, unique: str) -> None:
    state = tmp_path / "state"
    env = {"PATH": os.defpath, "API_KEY": "k-53cr3t", "SETPOINT_WORKLOAD": unique}
    with umask(0):
        running = processes.start(str(state), unique, 0, "v1", "echo hello; exec sleep 300", env, None, 0)
        ended = processes.start(str(state), unique, 1, "v1", "echo bye", env, None, 0)
    try:
        record = Path(ended.record)
        wait_for(lambda: exit_file(record).exists(), 10, "the short replica's exit recorded")
        wait_for(lambda: "hello" in processes.log_tail(running.log), 10, "the long replica's log")
        folders = [state, state / "workloads", state / "workloads" / unique]
        files = list((state / "workloads" / unique).iterdir())
        assert {f.name for f in files} >= {record.name, record.name + ".exit", "replica-0.log", "replica-1.log"}
        assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in folders} == {"0o700"}
        assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o600" for f in files}
        assert not [f.name for f in files if b"k-53cr3t" in f.read_bytes()], "no file keeps the replica's env"
    finally:
        processes.stop(running, 0)


class Guarded(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        ok = self.headers.get("Authorization") == "Basic dXNlcjpzM2NyM3Q="  # user:s3cr3t
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_health_url_credentials_are_sent_but_never_shown(stack: dict, engine: Engine, unique: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        good = health.check(health.Probe(url=f"http://user:s3cr3t@127.0.0.1:{port}/{{replica}}"), 0, {})
        assert good.healthy, good.detail
        assert good.detail == f"GET http://***@127.0.0.1:{port}/0: 200"
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listens there any more: the error the admin sees names the URL, not the password.
    url = f"http://user:s3cr3t@127.0.0.1:{port}/health"
    insert_workload(engine, unique, "sleep 300", 1, health_url=url)

    def unhealthy() -> dict | None:
        row = status(engine, unique, "Workload")
        return row if row and row["observed"].get("checks") and row["phase"] == "Degraded" else None

    row = wait_for(unhealthy, 30, "the failed check in status")
    healthy = next(c for c in row["conditions"] if c["type"] == "Healthy")
    assert healthy["reason"] == "Unhealthy" and f"GET http://***@127.0.0.1:{port}/health" in healthy["message"]
    assert "s3cr3t" not in str(row), row
    broken = health.check(health.Probe(url="http://user:s3cr3t@127.0.0.1:notaport/"), 0, {})
    assert not broken.healthy and "s3cr3t" not in broken.detail and "***" in broken.detail, broken.detail


def test_a_health_command_that_times_out_leaves_nothing_running(unique: str) -> None:
    env = {"PATH": os.defpath, "SETPOINT_WORKLOAD": unique}
    result = health.check(health.Probe(command="sh -c 'sleep 300 & sleep 300'"), 0, env, timeout_s=0.5)
    assert not result.healthy and "timed out after 0.5s" in result.detail
    assert replicas_of(unique) == [], "the check's shell and both sleeps are gone"


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # between the rotation's rename and the new log
        return 0


def folder_in_place_of(log: Path) -> bool:
    """Whether the log could be replaced by a folder this time (the shim reopens a removed log at once)."""
    with contextlib.suppress(FileNotFoundError):
        log.unlink()
    try:
        log.mkdir()
    except FileExistsError:
        return False
    return True


def test_a_chatty_replicas_log_is_rotated_and_bounded(tmp_path: Path, unique: str) -> None:
    limit = 64 * 1024
    env = {"PATH": os.defpath, "SETPOINT_WORKLOAD": unique}
    replica = processes.start(str(tmp_path), unique, 0, "v1", "yes", env, None, 0, log_max_bytes=limit)
    log = Path(replica.log)
    try:
        wait_for(lambda: log.with_name(log.name + ".1").exists(), 20, "the log rotated")
        sizes = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # sample while `yes` writes as fast as it can
            sizes.append(sum(size(p) for p in (log, log.with_name(log.name + ".1"))))
            time.sleep(0.02)
        assert max(sizes) <= 2 * limit + 4096, max(sizes)
        assert processes.log_tail(replica.log, lines=3) == "y\ny\ny"
        # The log cannot be written any more (a folder in its place): the replica runs on regardless, never
        # blocked on a full pipe.
        wait_for(lambda: folder_in_place_of(log), 10, "a folder in the log's place")
        busy = sum(psutil.Process(replica.pid).cpu_times()[:2])
        wait_for(lambda: sum(psutil.Process(replica.pid).cpu_times()[:2]) > busy + 0.3, 20, "`yes` still writing")
        assert log.is_dir() and identity.running(replica.pid, identity.start_ticks(replica.pid))
    finally:
        processes.stop(replica, 0)


def test_crash_loop_keeps_one_ended_record_per_slot(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "false", 1)
    folder = Path(stack["SETPOINT_STATE_DIR"]) / "workloads" / unique
    counts: list[int] = []

    def restarts() -> int:
        counts.append(len(list(folder.glob("*.json"))))
        waiting = ((status(engine, unique, "Workload") or {}).get("observed") or {}).get("waiting") or []
        return waiting[0]["restarts"] >= 4 if waiting else 0

    wait_for(restarts, 40, "four restarts")
    assert max(counts) <= 2, counts


def test_an_unknown_or_forbidden_run_as_user_is_a_clear_status() -> None:
    from worker.runtime import run_controller

    desired = Workload(name="web", command="sleep 300", replicas=1, env={})
    controller = WorkloadController(Settings(state_dir="/nonexistent", run_as="no-such-user-x"))
    result = run_controller(controller, desired, deleting=False)
    assert result.outcome == "invalid" and not result.transient, "Invalid, not retried until the row changes"
    assert result.reason == "RunAsUnknown" and "SETPOINT_RUN_AS='no-such-user-x' names no user" in str(result.error)
    os.setegid(NOBODY)  # a worker that is not root
    os.seteuid(NOBODY)
    try:
        with pytest.raises(identity.RunAsDenied, match="only a worker running as root"):
            identity.user("root")
        assert identity.user("nobody") is None, "its own user is no change"
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_replicas_and_health_commands_run_as_the_run_as_user(fresh: dict, tmp_path: Path, unique: str) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker({**fresh, "SETPOINT_RUN_AS": "nobody"}, tmp_path / "worker.log")
    try:
        insert_workload(
            engine,
            unique,
            "id -u; echo $HOME; pwd; exec sleep 300",
            2,
            health_command='test "$(id -u)" = 65534',
            working_dir="/tmp",
        )
        wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "running and healthy as nobody")
        assert {p.uids().real for p in replicas_of(unique)} == {NOBODY}
        log = Path(fresh["SETPOINT_STATE_DIR"]) / "workloads" / unique / "replica-0.log"
        assert processes.log_tail(str(log)).splitlines()[:3] == [str(NOBODY), "/nonexistent", "/tmp"]
        assert log.stat().st_uid == 0 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()
