"""A reconcile whose lock session the database ended stops before its next action: never two at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.schema import CreateTable

from models import triggers
from models.database import make_engine
from setpoint.errors import LockLost
from tests.conftest import start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, runs, sql
from tests.kinds import Steps, StepsController, step_lines
from worker.runtime import run_controller

LOCK_HOLDER = """
SELECT l.pid FROM pg_locks AS l
WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = ((hashtextextended('Steps/' || :n, 0) >> 32) & 4294967295)::oid
  AND l.objid = (hashtextextended('Steps/' || :n, 0) & 4294967295)::oid
"""


def create_steps_kind(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(CreateTable(Steps.__table__))  # type: ignore[attr-defined]
        conn.execute(text(triggers.attach("steps", "Steps")))
        conn.execute(text(triggers.grant("steps")))


def lock_holder(engine: Engine, name: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(text(LOCK_HOLDER), {"n": name}).scalar()


def test_a_worker_whose_lock_session_ended_stops_and_another_reconcile_finishes(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    create_steps_kind(engine)
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log", concurrency=1)
    log = tmp_path / "steps.log"
    try:
        wait_for(lambda: "ready." in worker.output(), 60, "worker ready")
        sql(
            engine,
            "INSERT INTO steps (name, log_path, steps, step_seconds, interval_seconds) VALUES ('slow', :p, 3, 1, 2)",
            p=str(log),
        )
        wait_for(lambda: len(step_lines(str(log))) == 1, 20, "the first action under way")
        holder = wait_for(lambda: lock_holder(engine, "slow"), 5, "the reconcile's lock session")
        sql(engine, "SELECT pg_terminate_backend(:pid)", pid=holder)

        wait_for(lambda: ready_at(engine, "slow", 1, kind="Steps"), 40, "converged by another reconcile")
        lines = [line.split() for line in step_lines(str(log))]
        first_attempt = lines[0][1]
        assert [step for step, attempt in lines if attempt == first_attempt] == ["0"], (
            f"the reconcile whose session ended went on acting: {lines}"
        )
        assert [step for step, _ in lines] == ["0", "1", "2"], "the next reconcile did the rest, once"
        history = runs(engine, "slow", kind="Steps")
        assert [(r["outcome"], r["actions"]) for r in history] == [("changed", ["step 1", "step 2"])], (
            "the abandoned attempt recorded nothing"
        )
        assert "lock lost, reconcile abandoned" in worker.output()
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()


def test_no_action_runs_once_the_lock_is_known_lost(tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    desired = Steps(name="pure", log_path=str(log), steps=3, step_seconds=0)
    checks = iter([True, True, False])
    with pytest.raises(LockLost, match="after 2 of 3 actions"):
        run_controller(StepsController(), desired, deleting=False, still_locked=lambda: next(checks))
    assert [line.split()[0] for line in step_lines(str(log))] == ["0", "1"]


def test_a_lock_lost_while_observing_runs_no_action_at_all(tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    desired = Steps(name="pure", log_path=str(log), steps=1, step_seconds=0)
    with pytest.raises(LockLost, match="after 0 of 1 actions"):
        run_controller(StepsController(), desired, deleting=False, still_locked=lambda: False)
    assert step_lines(str(log)) == []
