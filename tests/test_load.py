"""Load the way admins make it: one UPDATE touching every row wakes the scheduler once, queues one message
per resource at most, and everything converges."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import Engine, text

from models import triggers
from models.database import libpq_url, make_engine
from tests.conftest import start_scheduler, start_worker, wait_for

ROWS = 100_000
"""An admin's UPDATE touching every row of a big installation; reconciling them all takes about 5 minutes here."""


def insert_noops(engine: Engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO noops (name, interval_seconds) SELECT 'n' || i, 3600 FROM generate_series(1, :rows) i"),
            {"rows": rows},
        )


def test_an_update_of_100000_rows_wakes_the_scheduler_once(fresh: dict) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    insert_noops(engine, ROWS)
    heard: list[str] = []
    listening, stop = threading.Event(), threading.Event()

    def listen() -> None:
        with psycopg.connect(libpq_url(fresh["SETPOINT_DATABASE_URL"]), autocommit=True) as conn:
            conn.execute(f"LISTEN {triggers.CHANNEL}")
            listening.set()
            while not stop.is_set():
                heard.extend(note.payload for note in conn.notifies(timeout=0.5))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        assert listening.wait(30)
        with engine.begin() as conn:  # the admin's UPDATE: 100,000 rows, one statement
            conn.execute(text("UPDATE noops SET note = 'touched'"))
        # Notifications arrive in commit order: once this later one is heard, every one the UPDATE sent is too.
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_notify(:channel, 'marker')"), {"channel": triggers.CHANNEL})
        wait_for(lambda: "marker" in heard, 60, "the notifications of the committed UPDATE")
    finally:
        stop.set()
        listener.join(10)
    assert heard.count("") == 1 and len(heard) == 2, f"one wake-up for one statement, not one per row: {heard[:5]}"
    with engine.connect() as conn:
        due = conn.execute(text("SELECT count(*) FROM statuses WHERE generation = 2 AND next_reconcile_at <= now()"))
        assert due.scalar_one() == ROWS, "and every changed row is due"
    engine.dispose()


@pytest.mark.timeout(1500)
def test_an_update_of_every_row_is_reconciled_once_each_and_converges(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    broker = redis.Redis.from_url(fresh["SETPOINT_BROKER_URL"])
    insert_noops(engine, ROWS)
    with engine.begin() as conn:  # an installation in sync, as the running stack found it
        conn.execute(
            text("UPDATE statuses SET observed_generation = generation, ready = true, phase = 'Ready', "
                 "next_reconcile_at = now() + interval '1 hour'")
        )  # fmt: skip
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    try:
        wait_for(lambda: "leading" in scheduler.output() and "ready." in worker.output(), 60, "the stack running")
        with engine.begin() as conn:  # the admin's UPDATE: every row, one statement, while the stack runs
            conn.execute(text("UPDATE noops SET note = 'touched'"))
        queue = fresh["SETPOINT_QUEUE"]
        peak = 0

        def converged() -> bool:
            nonlocal peak
            waiting = int(broker.llen(queue))
            peak = max(peak, waiting)
            if waiting:  # not there yet, and counting in the database would take CPU from the stack
                return False
            with engine.connect() as conn:
                behind = conn.execute(
                    text("SELECT count(*) FROM statuses WHERE observed_generation IS DISTINCT FROM generation")
                ).scalar_one()
            return behind == 0

        wait_for(converged, 900, "every resource reconciled at generation 2")
        assert peak <= ROWS, f"never more than one message per resource (peak queue {peak})"
        with engine.connect() as conn:
            claims = conn.execute(text("SELECT max(claim) FROM statuses")).scalar_one()
        assert claims == 1, "each resource enqueued exactly once"
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()


@pytest.mark.timeout(300)
def test_a_steady_load_keeps_pace_without_queue_growth_and_bounded_history(fresh: dict, tmp_path: Path) -> None:
    """The benchmark's 10,000 resources at 60 s, scaled down: 500 resources at 5 s, held for 30 s."""
    resources, interval_s, window_s, kept = 500, 5, 30.0, 3
    env = {**fresh, "SETPOINT_HISTORY_NOOPS_KEPT": str(kept), "SETPOINT_HOUSEKEEPING_SECONDS": "5"}
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    broker = redis.Redis.from_url(fresh["SETPOINT_BROKER_URL"])
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO noops (name, interval_seconds) SELECT 'n' || i, :s FROM generate_series(1, :n) i"),
            {"s": interval_s, "n": resources},
        )
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    worker = start_worker(env, tmp_path / "worker.log")

    def claims() -> dict[str, int]:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT name, claim FROM statuses")).all())  # type: ignore[arg-type]

    try:
        wait_for(lambda: min(claims().values()) >= 2, 60, "every resource past its first period")
        before, queue_sizes, started = claims(), [], time.monotonic()
        wait_for(
            lambda: (
                queue_sizes.append(int(broker.llen(fresh["SETPOINT_QUEUE"]))) or time.monotonic() - started >= window_s
            ),
            window_s + 5,
            "the load held",
        )
        after = claims()
        rounds = sorted(after[name] - before[name] for name in before)
        expected = window_s / interval_s  # 6, give or take the ±10% jitter and the window's edges
        assert rounds[0] >= expected - 2 and rounds[-1] <= expected + 2, f"reconciled once per interval: {rounds}"
        assert max(queue_sizes) <= resources, f"one message per resource at most: {max(queue_sizes)}"
        assert queue_sizes[-1] < resources / 2, f"the queue does not grow: {queue_sizes[-10:]}"
        with engine.connect() as conn:
            history = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
        assert history <= resources * (kept + 3), f"run history bounded by retention: {history} rows"
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()
