"""Status tells the truth: a rollout is Progressing (not Degraded), status shows the world as the last reconcile
left it, and replica logs show what Python programs print as they print it."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from controllers.file import digest
from controllers.workload import WorkloadController
from models import Workload
from setpoint.settings import Settings
from tests.conftest import ROOT, wait_for
from tests.helpers import ready_at, runs, sql, status
from tests.test_workloads import insert_workload, running
from worker.controller import Health
from worker.outcome import Result, status_update

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def update_for(health: Health) -> tuple[str, bool, dict[str, dict]]:
    result = Result("changed", ("start replica 0",), health=health)
    update, _ = status_update(
        result, generation=2, previous={}, interval_seconds=10, settings=Settings(), now=NOW, rng=random.Random(1)
    )
    return update.phase, update.ready, {c["type"]: c for c in update.conditions}


def test_a_rollout_in_progress_is_progressing_not_degraded() -> None:
    phase, ready, conditions = update_for(Health(False, "RollingUpdate", "1/3 replicas updated", progressing=True))
    assert (phase, ready) == ("Progressing", False)
    assert conditions["Ready"]["reason"] == "RollingUpdate" and conditions["Ready"]["message"] == "1/3 replicas updated"
    assert conditions["Synced"]["status"] == "True" and conditions["Healthy"]["status"] == "False"


def test_health_failing_is_degraded() -> None:
    for reason in ("CrashLoopBackOff", "Unhealthy"):
        phase, ready, conditions = update_for(Health(False, reason, "replica 0 exited with code 3"))
        assert (phase, ready, conditions["Ready"]["reason"]) == ("Degraded", False, reason)


def test_replicas_are_unbuffered_unless_the_row_says_otherwise() -> None:
    controller = WorkloadController(Settings(state_dir="/state"))
    workload = Workload(name="web", command="python3 app.py", replicas=1, env={})
    assert dict(controller._env(workload, 0))["PYTHONUNBUFFERED"] == "1"
    buffered = Workload(name="web", command="python3 app.py", replicas=1, env={"PYTHONUNBUFFERED": ""})
    assert dict(controller._env(buffered, 0))["PYTHONUNBUFFERED"] == ""


def test_a_rolling_update_is_progressing_never_degraded(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "sleep 300", 3)
    wait_for(lambda: ready_at(engine, unique, 1, "Workload"), 30, "three replicas running")
    phases: list[tuple[str, str]] = []  # (phase, Ready reason) of generation 2, sampled over the rollout
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            row = status(engine, unique, "Workload") or {}
            if row.get("observed_generation") == 2:
                ready = next(c for c in row["conditions"] if c["type"] == "Ready")
                phases.append((row["phase"], ready["reason"]))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sql(engine, "UPDATE workloads SET command = 'sleep 301' WHERE name = :n", n=unique)
        wait_for(lambda: ready_at(engine, unique, 2, "Workload"), 60, "rolled out")
    finally:
        done.set()
        watcher.join()
    assert "Degraded" not in {p for p, _ in phases}, f"a rollout is not a failure: {sorted(set(phases))}"
    assert ("Progressing", "RollingUpdate") in phases, sorted(set(phases))


def test_python_output_reaches_the_replica_log_at_once(stack: dict, engine: Engine, unique: str) -> None:
    insert_workload(engine, unique, "python3 -m http.server 0 --bind 127.0.0.1", 1)
    wait_for(lambda: running(unique, 1), 30, "the server running")
    log = Path(stack["SETPOINT_STATE_DIR"]) / "workloads" / unique / "replica-0.log"
    shown = wait_for(lambda: log.exists() and "Serving HTTP on" in log.read_text() and log.read_text(), 5, "the port")
    assert "port" in shown


def test_status_after_a_heal_shows_the_healed_file_and_no_drift(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    target = tmp_path / "motd"
    sql(
        engine,
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (:n, :p, 'desired', 3600)",
        n=unique,
        p=str(target),
    )
    wait_for(lambda: ready_at(engine, unique, 1), 20, "file ready")
    target.write_text("tampered")
    sql(engine, "UPDATE statuses SET next_reconcile_at = now() WHERE kind = 'File' AND name = :n", n=unique)
    wait_for(lambda: len([r for r in runs(engine, unique) if r["outcome"] == "changed"]) >= 2, 20, "healed")
    row = status(engine, unique)
    assert row is not None and row["ready"]
    assert row["observed"]["sha256"] == digest("desired") and row["observed"]["exists"]
    assert row["drift"] == [], "the drift was fixed: none is left"
    described = subprocess.run(
        [sys.executable, "-m", "setpoint.cli", "describe", "file", unique],
        cwd=ROOT,
        env={**stack, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    drift = described.stdout.split("Drift")[1].split("Last runs")[0]
    assert described.returncode == 0 and "write" not in drift, described.stdout
