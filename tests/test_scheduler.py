"""The scheduler: one active leader, one pending message per resource, and nothing stuck after a loss."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import redis
from celery import Celery
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from models.database import make_engine
from tests.conftest import Process, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, runs, sql


def queued(env: dict[str, str]) -> int:
    return int(redis.Redis.from_url(env["SETPOINT_BROKER_URL"]).llen(env["SETPOINT_QUEUE"]))


def leader_of(*schedulers: Process) -> Process | None:
    leading = [s for s in schedulers if "leading" in s.output()]
    return leading[0] if len(leading) == 1 else None


def test_one_pending_message_per_resource_however_often_it_changes(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    try:
        sql(engine, "INSERT INTO files (name, path, content) VALUES ('busy', :p, '0')", p=str(tmp_path / "f"))
        wait_for(lambda: queued(fresh) == 1, 10, "the first reconcile queued")
        unpicked_s = seconds_since_enqueued(engine, "busy")
        for i in range(1, 51):  # no worker is running: the queue must not grow
            sql(engine, "UPDATE files SET content = :c WHERE name = 'busy'", c=str(i))
        sql(engine, "UPDATE statuses SET next_reconcile_at = now()")  # an admin asking for it now, too
        # No worker for many ticks (0.2 s each), though less than the 30 s interval after which an unpicked
        # message counts as lost: the pending message stays the only one.
        wait_for(lambda: unpicked_s() > 6, 15, "'busy' left unpicked for 6 s")
        # A second resource queued after all that proves the scheduler has ticked since.
        sql(engine, "INSERT INTO files (name, path) VALUES ('later', :p)", p=str(tmp_path / "later"))
        wait_for(lambda: queued(fresh) >= 2, 10, "the later resource queued")
        assert max_claim(engine, "busy") == 1, "one message for 'busy', however often it changed"
        assert queued(fresh) == 2
        worker = start_worker(fresh, tmp_path / "worker.log")
        try:
            wait_for(lambda: ready_at(engine, "busy", 51), 30, "the latest generation applied")
            assert (tmp_path / "f").read_text() == "50"
        finally:
            worker.stop()
    finally:
        scheduler.stop()
        engine.dispose()


def test_a_lost_message_is_made_up_for_within_one_interval(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = None
    try:
        sql(
            engine,
            "INSERT INTO files (name, path, content, interval_seconds) VALUES ('lost', :p, 'x', 3)",
            p=str(tmp_path / "f"),
        )
        wait_for(lambda: queued(fresh) == 1, 10, "reconcile queued")
        redis.Redis.from_url(fresh["SETPOINT_BROKER_URL"]).delete(fresh["SETPOINT_QUEUE"])  # the message is gone
        worker = start_worker(fresh, tmp_path / "worker.log")
        wait_for(lambda: ready_at(engine, "lost", 1), 3 + 15, "reconciled after the loss")
        assert (tmp_path / "f").read_text() == "x"
    finally:
        if worker:
            worker.stop()
        scheduler.stop()
        engine.dispose()


def test_two_schedulers_never_double_enqueue_and_a_standby_takes_over(fresh: dict, tmp_path: Path) -> None:
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    first = start_scheduler(fresh, tmp_path / "first.log")
    second = start_scheduler(fresh, tmp_path / "second.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    try:
        active = wait_for(lambda: leader_of(first, second), 15, "exactly one leader")
        standby = second if active is first else first
        with engine.begin() as conn:  # 200 resources due at once, each due exactly once in this test
            conn.execute(
                text(
                    "INSERT INTO files (name, path, interval_seconds) "
                    "SELECT 'f' || i, :dir || '/f' || i, 3600 FROM generate_series(1, 200) AS i"
                ),
                {"dir": str(tmp_path)},
            )
        wait_for(lambda: _ready_count(engine) == 200, 60, "all 200 ready")
        active.kill()  # SIGKILL: no goodbye, its session (and lock) dies with it
        wait_for(lambda: "leading" in standby.output(), 10, "standby leads within 10 s")
        sql(engine, "INSERT INTO files (name, path) VALUES ('after', :p)", p=str(tmp_path / "after"))
        wait_for(lambda: ready_at(engine, "after", 1), 15, "new resource served by the new leader")
        with engine.connect() as conn:
            counts = conn.execute(text("SELECT count(*) FROM runs GROUP BY name")).scalars().all()
            claims = conn.execute(text("SELECT max(claim) FROM statuses")).scalar_one()
        assert set(counts) == {1}, "every due reconcile ran exactly once"
        assert claims == 1, "and was enqueued exactly once"
        assert len(runs(engine, "after")) == 1
    finally:
        worker.stop()
        for s in (first, second):
            if s.popen.poll() is None:
                s.stop()
        engine.dispose()


def seconds_since_enqueued(engine: Engine, name: str) -> Callable[[], float]:
    """A clock, by the database's time, started when the resource's pending message was enqueued."""
    with engine.connect() as conn:
        query = "SELECT enqueued_at FROM statuses WHERE name = :n"
        enqueued_at = conn.execute(text(query), {"n": name}).scalar_one()

    def elapsed() -> float:
        with engine.connect() as conn:
            query = "SELECT EXTRACT(EPOCH FROM now() - :t)"
            return float(conn.execute(text(query), {"t": enqueued_at}).scalar_one())

    return elapsed


def max_claim(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT claim FROM statuses WHERE name = :n"), {"n": name}).scalar_one()


def _ready_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM statuses WHERE ready")).scalar_one()


def test_a_claim_batch_reaches_the_queue_and_flower_whole(fresh: dict, tmp_path: Path) -> None:
    """The scheduler sends a claim batch as one Redis pipeline: every message is queued, and every task-sent
    event (by which Flower shows queued tasks, with their kind and name) is published."""
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    app = Celery(broker=fresh["SETPOINT_BROKER_URL"])
    ours: list[dict] = []
    marker = f"marker-{fresh['SETPOINT_QUEUE']}"

    def heard(event: dict) -> None:
        if event.get("queue") in (fresh["SETPOINT_QUEUE"], marker):
            ours.append(event)

    with app.connection_for_read() as conn, app.connection_for_write() as out:
        receiver = app.events.Receiver(conn, handlers={"task-sent": heard})
        listener = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        listener.start()
        dispatcher = app.events.Dispatcher(out)

        def listening() -> bool:  # events are not kept for late subscribers: wait until one of ours is heard
            dispatcher.send("task-sent", queue=marker)
            return any(event["queue"] == marker for event in ours)

        wait_for(listening, 10, "listening for events, as Flower does")
        ours.clear()
        sql(engine, "INSERT INTO noops (name) SELECT 'b' || i FROM generate_series(1, :n) i", n=BATCH)
        scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
        try:
            wait_for(lambda: queued(fresh) == BATCH, 20, "every message queued")
            sent = wait_for(lambda: [e for e in ours if e["queue"] == fresh["SETPOINT_QUEUE"]][BATCH - 1 :], 10)
            assert sent, "a task-sent event for every message"
            names = {str(event["args"]) for event in ours if event["queue"] == fresh["SETPOINT_QUEUE"]}
            assert len(names) == BATCH and all("Noop" in n for n in names) and any("'b1'" in n for n in names)
        finally:
            receiver.should_stop = True
            listener.join(10)
            scheduler.stop()
            engine.dispose()


BATCH = 120


def test_a_batch_the_broker_refuses_is_released_and_sent_once_it_accepts(fresh: dict, tmp_path: Path) -> None:
    """Redis refuses the pipeline's LPUSHes (a real refusal: an ACL user without LPUSH): every claim of the
    batch is released and claimed again at the next tick, not left enqueued until the lost-message rule (an
    hour here); once Redis accepts, each resource gets exactly one message."""
    admin = redis.Redis.from_url(fresh["SETPOINT_BROKER_URL"])
    user, password = f"setpoint-{fresh['SETPOINT_QUEUE']}", "refused"
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                      commands=["+@all", "-lpush"])  # fmt: skip
    url = make_url(fresh["SETPOINT_BROKER_URL"]).set(username=user, password=password)
    env = {**fresh, "SETPOINT_BROKER_URL": url.render_as_string(hide_password=False)}
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    sql(engine, "INSERT INTO noops (name, interval_seconds) SELECT 'r' || i, 3600 FROM generate_series(1, 50) i")
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")

    def released_and_claimed_again() -> bool:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT min(claim), count(enqueued_at) FROM statuses")).one()
        return row[0] >= 2 and row[1] == 0

    try:
        wait_for(released_and_claimed_again, 20, "claims released and claimed again at each tick")
        assert queued(fresh) == 0
        admin.acl_setuser(user, enabled=True, commands=["+lpush"])
        wait_for(lambda: queued(fresh) == 50, 20, "every resource sent once Redis accepts")
        with engine.connect() as conn:
            pending = conn.execute(text("SELECT count(enqueued_at) FROM statuses")).scalar_one()
        assert pending == 50, "each one enqueued, so none is claimed again: one message per resource"
        assert queued(fresh) == 50
    finally:
        scheduler.stop()
        admin.acl_deluser(user)
        engine.dispose()
