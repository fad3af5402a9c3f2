"""PostgreSQL and Redis restarted under a running stack: the scheduler and the worker reconnect by
themselves, and changes made afterwards are applied. The servers are embedded ones of the test's own,
so restarting them disturbs nothing else on the machine."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import text

from models.database import make_engine
from setpoint import embedded
from tests.conftest import alembic, create_test_kinds, stack_env, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, runs, sql

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(300)
def test_the_stack_reconnects_after_postgresql_and_redis_restart(tmp_path: Path) -> None:
    ports = (free_port(), free_port())
    data = tmp_path / "servers"
    with embedded.running(data, ports) as servers:
        alembic("upgrade", "head", database_url=servers.database_url)
        create_test_kinds(servers.database_url)
    env = stack_env(servers.database_url, servers.broker_url, tmp_path / "state")
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    worker = start_worker(env, tmp_path / "worker.log")
    target = tmp_path / "motd"
    try:
        with embedded.running(data, ports):
            engine = make_engine(servers.database_url)
            sql(
                engine,
                "INSERT INTO files (name, path, content, interval_seconds) VALUES ('motd', :p, 'one', 2)",
                p=str(target),
            )
            wait_for(lambda: ready_at(engine, "motd", 1), 60, "reconciled before the restart")
            engine.dispose()
        # Both servers are down now; the stack keeps running and must not need a restart of its own.
        with embedded.running(data, ports) as again:
            assert (again.database_url, again.broker_url) == (servers.database_url, servers.broker_url)
            engine = make_engine(again.database_url)
            wait_for(
                lambda: succeeds(lambda: sql(engine, "UPDATE files SET content = 'two' WHERE name = 'motd'")),
                30,
                "the database back",
            )
            wait_for(lambda: target.exists() and target.read_text() == "two", 120, "a change after the restart applied")
            wait_for(lambda: answer(lambda: ready_at(engine, "motd", 2)), 60, "status reported after the restart")
            target.write_text("drifted")
            wait_for(lambda: target.read_text() == "two", 60, "drift healed after the restart")
            engine.dispose()
    finally:
        worker.kill()
        scheduler.kill()


def succeeds(action: Callable[[], object]) -> bool:
    """Whether `action` ran without raising (the database may still be starting)."""
    try:
        action()
    except Exception:
        return False
    return True


def answer(check: Callable[[], T]) -> T | None:
    """What `check` returns, or None while the database cannot answer it: a check that finds nothing stays
    falsy, so waiting on it waits for what it looks for."""
    try:
        return check()
    except Exception:
        return None


@pytest.mark.timeout(120)
def test_a_worker_whose_database_sessions_were_ended_reconciles_at_once(fresh: dict, tmp_path: Path) -> None:
    """Workers lend pooled connections without checking them first (a round trip saved per reconcile), so a
    connection the server closed is found dead by the reconcile itself, which must try again on a new one at
    once: with an hour's interval, nothing else would bring the change back before then."""
    engine = make_engine(fresh["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log")
    try:
        sql(engine, "INSERT INTO noops (name, interval_seconds) VALUES ('steady', 3600)")
        wait_for(lambda: ready_at(engine, "steady", 1, kind="Noop"), 60, "reconciled before the sessions end")
        with engine.connect() as conn:  # what a restart does to every session but ours
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert ended >= 2, "the scheduler's and the worker's sessions"
        sql(engine, "UPDATE noops SET labels = '{\"touched\": \"yes\"}' WHERE name = 'steady'")
        wait_for(lambda: ready_at(engine, "steady", 2, kind="Noop"), 15, "the change reconciled at once")
        assert [r["outcome"] for r in runs(engine, "steady", kind="Noop")] == ["noop", "noop"]
        assert "stale database connection, reconciling again" in worker.output()
    finally:
        worker.stop()
        scheduler.stop()
        engine.dispose()
