"""Workers killed mid-reconcile lose nothing: the reconcile runs again and the end state is right."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from sqlalchemy import Engine

from models.database import make_engine
from tests.conftest import Process, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, runs, sql
from tests.kinds import attempts


def pool_children(pid: int) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def start_slow_action(engine: Engine, worker: Process, counter: Path, interval_seconds: int) -> None:
    """Return while a worker is in the middle of a 2-second action on the resource 'victim'."""
    wait_for(lambda: "ready." in worker.output(), 60, "worker ready")
    sql(
        engine,
        "INSERT INTO flakies (name, counter_path, fail_times, hang_seconds, interval_seconds) "
        "VALUES ('victim', :c, 0, 2, :i)",
        c=str(counter),
        i=interval_seconds,
    )
    wait_for(lambda: attempts(str(counter)) == 1, 20, "the action under way")


def received_task_ids(worker: Process) -> list[str]:
    """The ids of the reconcile messages the worker has taken, in order, from its log."""
    return re.findall(r"Task setpoint\.reconcile\[([0-9a-f-]+)\] received", worker.output())


def test_pool_process_killed_mid_action_is_redelivered_at_once(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    counter = tmp_path / "count"
    try:
        # Interval of an hour: only Celery's redelivery (acks_late + reject_on_worker_lost) can bring it back.
        start_slow_action(engine, worker, counter, interval_seconds=3600)
        killed = wait_for(lambda: received_task_ids(worker), 10, "the message under way, in the worker's log")
        for child in pool_children(worker.popen.pid):
            os.kill(child, signal.SIGKILL)
        wait_for(lambda: ready_at(engine, "victim", 1, kind="Flaky"), 30, "reconciled again after the kill")
        # The killed attempt left no run; its redelivered message found the action done (idempotent).
        history = runs(engine, "victim", kind="Flaky")
        assert [r["outcome"] for r in history] == ["noop"]
        # The very message that was under way, not one the scheduler sent later in its place (its lost-message
        # rule would rescue the resource too, only later).
        assert killed == [history[0]["task_id"]], (killed, history[0]["task_id"])
        assert "WorkerLostError" in worker.output()
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()


def test_whole_worker_host_gone_is_made_up_for_by_the_scheduler(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    replacement = None
    counter = tmp_path / "count"
    try:
        start_slow_action(engine, worker, counter, interval_seconds=3)
        worker.kill()  # every process of the worker, at once; its unacked message waits in Redis
        replacement = start_worker(fresh, tmp_path / "replacement.log", name="w2")
        wait_for(lambda: ready_at(engine, "victim", 1, kind="Flaky"), 3 + 20, "reconciled within an interval")
        history = runs(engine, "victim", kind="Flaky")
        assert history[0]["outcome"] == "noop" and history[0]["worker"].startswith("w2@")
    finally:
        if replacement:
            replacement.stop()
        scheduler.stop()
        engine.dispose()


def test_killed_mid_action_three_times_in_a_row_still_converges(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    counter = tmp_path / "count"
    try:
        wait_for(lambda: "ready." in worker.output(), 60, "worker ready")
        # Each attempt counts itself, then works for 2 s; the first three would fail, but are killed first.
        sql(
            engine,
            "INSERT INTO flakies (name, counter_path, fail_times, hang_seconds, interval_seconds) "
            "VALUES ('victim', :c, 3, 2, 3600)",
            c=str(counter),
        )
        for attempt in (1, 2, 3):
            wait_for(lambda n=attempt: attempts(str(counter)) == n, 30, f"attempt {attempt} under way")
            for child in pool_children(worker.popen.pid):
                os.kill(child, signal.SIGKILL)
        wait_for(lambda: ready_at(engine, "victim", 1, kind="Flaky"), 60, "converged after three kills")
        assert attempts(str(counter)) == 4
        assert [r["outcome"] for r in runs(engine, "victim", kind="Flaky")] == ["changed"], "killed runs left no row"
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()
