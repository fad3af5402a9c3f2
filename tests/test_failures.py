"""Failures: retried with growing delays, recorded in history and status, never starving other resources."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from tests.conftest import wait_for
from tests.helpers import ready_at, runs, sql, status


def insert_flaky(engine: Engine, name: str, counter: Path, fail_times: int, hang_seconds: float = 0) -> None:
    sql(
        engine,
        "INSERT INTO flakies (name, counter_path, fail_times, hang_seconds) VALUES (:n, :c, :f, :h)",
        n=name,
        c=str(counter),
        f=fail_times,
        h=hang_seconds,
    )


def test_fails_three_times_then_succeeds_with_growing_delays(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    insert_flaky(engine, unique, tmp_path / "count", fail_times=3)
    row = wait_for(lambda: ready_at(engine, unique, 1, kind="Flaky"), 30, "ready after three failures")
    history = runs(engine, unique, kind="Flaky")
    assert [r["outcome"] for r in history] == ["failed", "failed", "failed", "changed"]
    assert all("simulated failure" in r["error"] for r in history[:3])
    gaps = [(b["started_at"] - a["finished_at"]).total_seconds() for a, b in zip(history, history[1:], strict=False)]
    assert gaps[0] < gaps[1] < gaps[2], f"delays between attempts must grow, got {gaps}"
    assert [r["attempt"] for r in history] == [0, 1, 2, 3], "the quick retries are Celery's own"
    assert row["consecutive_failures"] == 0 and row["last_error"] is None


def test_a_resource_that_always_fails_shows_it_and_backs_off(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    insert_flaky(engine, unique, tmp_path / "count", fail_times=-1)
    row = wait_for(
        lambda: (s := status(engine, unique, "Flaky")) and s["consecutive_failures"] >= 5 and s,
        40,
        "five consecutive failures",
    )
    assert row["phase"] == "Failed" and not row["ready"]
    assert "simulated failure" in row["last_error"]
    ready = next(c for c in row["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ReconcileError" and "will retry" in ready["message"]
    delay = (row["next_reconcile_at"] - row["last_reconcile_at"]).total_seconds()
    assert 2 <= delay <= 5.01, f"backoff is capped by SETPOINT_BACKOFF_MAX_SECONDS (5 s here), got {delay}"
    # Meanwhile another resource is served at once.
    other = f"{unique}-ok"
    insert_flaky(engine, other, tmp_path / "other", fail_times=0)
    wait_for(lambda: ready_at(engine, other, 1, kind="Flaky"), 10, "healthy neighbour ready")


def test_a_hanging_controller_is_ended_by_its_time_limit(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    insert_flaky(engine, unique, tmp_path / "count", fail_times=0, hang_seconds=60)
    history = wait_for(lambda: runs(engine, unique, kind="Flaky"), 20, "the hung attempt recorded")
    assert history[0]["outcome"] == "failed" and "SoftTimeLimitExceeded" in history[0]["error"]
    assert history[0]["duration_ms"] < 10_000
    # Its lock is free: the next attempt runs (and, having counted one attempt already, succeeds).
    sql(engine, "UPDATE flakies SET hang_seconds = 0 WHERE name = :n", n=unique)
    wait_for(lambda: ready_at(engine, unique, 2, kind="Flaky"), 20, "next attempt succeeds")
