"""Failures: retried with growing delays, recorded in history and status, never starving other resources."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from tests.conftest import wait_for
from tests.helpers import ready_at, runs, sql, stack_log, status
from tests.kinds import attempts


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
    # Each delay is at least base·2^k (0.5 s, 1 s, 2 s here): lower bounds that grow, whatever the load.
    assert all(gap >= 0.5 * 2**k for k, gap in enumerate(gaps)), f"delays between attempts must grow, got {gaps}"
    assert gaps[2] > gaps[0]
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


def delete_with_failing_teardown(engine: Engine, name: str, counter: Path) -> None:
    """A resource made ready, then deleted, whose teardown fails every time."""
    sql(
        engine, "INSERT INTO flakies (name, counter_path, teardown_fails) VALUES (:n, :c, true)", n=name, c=str(counter)
    )
    wait_for(lambda: ready_at(engine, name, 1, kind="Flaky"), 20, "ready")
    sql(engine, "DELETE FROM flakies WHERE name = :n", n=name)


def test_a_failing_teardown_backs_off_instead_of_spinning(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    delete_with_failing_teardown(engine, unique, tmp_path / "count")
    row = wait_for(
        lambda: (s := status(engine, unique, "Flaky")) and s["consecutive_failures"] >= 5 and s,
        30,
        "five failed teardowns",
    )
    assert row["phase"] == "Deleting" and "teardown failure" in row["last_error"]
    assert (row["next_reconcile_at"] - row["last_reconcile_at"]).total_seconds() >= 2, "backed off, not spinning"
    failed = [r for r in runs(engine, unique, "Flaky") if r["outcome"] == "failed"]
    assert len(failed) <= row["consecutive_failures"] + 1


def test_reinserting_a_resource_still_being_deleted_is_refused(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    delete_with_failing_teardown(engine, unique, tmp_path / "count")
    try:
        sql(engine, "INSERT INTO flakies (name, counter_path) VALUES (:n, :c)", n=unique, c=str(tmp_path / "other"))
    except IntegrityError as error:
        assert "still being deleted" in str(error)
    else:
        raise AssertionError("a name still being torn down was taken again")
    assert status(engine, unique, "Flaky")["last_desired"]["counter_path"] == str(tmp_path / "count")


def test_one_reconcile_of_a_resource_at_a_time(stack: dict, engine: Engine, unique: str, tmp_path: Path) -> None:
    from setpoint.settings import Settings
    from worker.celery_app import TASK, make_app

    sql(
        engine,
        "INSERT INTO flakies (name, counter_path, fail_times, hang_seconds, interval_seconds) "
        "VALUES (:n, :c, -1, 1, 3600)",
        n=unique,
        c=str(tmp_path / "count"),
    )
    wait_for(lambda: runs(engine, unique, "Flaky"), 20, "first attempt recorded")
    app = make_app(Settings(broker_url=stack["SETPOINT_BROKER_URL"], queue=stack["SETPOINT_QUEUE"]))
    for _ in range(4):  # four hand-sent reconciles at once, for two worker processes
        app.send_task(TASK, args=["Flaky", unique])
    wait_for(lambda: len(runs(engine, unique, "Flaky")) >= 5, 40, "all of them run")
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs(engine, unique, "Flaky"))
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), spans


def test_a_message_whose_claim_was_superseded_runs_nothing(
    stack: dict, engine: Engine, unique: str, tmp_path: Path
) -> None:
    from setpoint.settings import Settings
    from worker.celery_app import TASK, make_app

    counter = tmp_path / "count"
    sql(
        engine,
        "INSERT INTO flakies (name, counter_path, interval_seconds) VALUES (:n, :c, 3600)",
        n=unique,
        c=str(counter),
    )
    wait_for(lambda: ready_at(engine, unique, 1, kind="Flaky"), 20, "ready")
    before = status(engine, unique, "Flaky")
    assert before is not None and before["claim"] >= 1 and before["enqueued_at"] is None
    history = runs(engine, unique, "Flaky")
    # A duplicate as the scheduler would have sent it: a message carrying an older claim.
    app = make_app(Settings(broker_url=stack["SETPOINT_BROKER_URL"], queue=stack["SETPOINT_QUEUE"]))
    stale = app.send_task(TASK, args=["Flaky", unique], kwargs={"claim": before["claim"] - 1})
    done = wait_for(
        lambda: [line for line in stack_log(stack).splitlines() if f"[{stale.id}] succeeded" in line],
        20,
        "the worker done with the duplicate",
    )
    assert runs(engine, unique, "Flaky") == history, "no run is recorded for a superseded message"
    assert ": 'superseded'" in done[0], done
    assert attempts(str(counter)) == 1
    after = status(engine, unique, "Flaky")
    assert after is not None
    # Only the pick-up time moves (store.begin stamps it before it can tell the claim is old).
    assert {**after, "picked_at": None} == {**before, "picked_at": None}
