"""Fixtures on real servers: PostgreSQL and Redis at the configured URLs, else the embedded ones.

SETPOINT_TEST_DATABASE_URL names a PostgreSQL whose user may create databases (default: the local
server); each test session migrates a database of its own there with `alembic upgrade head` and drops
it at the end. SETPOINT_TEST_BROKER_URL names the Redis to use (default: db 13); every stack the tests start uses a
Celery queue of its own there, so test runs sharing a server do not take each other's messages.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from models import triggers
from models.database import libpq_url, make_engine
from setpoint import embedded
from setpoint.stack import worker_argv

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout_s` with its last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(admin database URL, broker URL) of real servers: configured ones if they answer, else embedded."""
    database = os.environ.get("SETPOINT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    broker = os.environ.get("SETPOINT_TEST_BROKER_URL", "redis://127.0.0.1:6379/13")
    if embedded.reachable_postgres(database) and embedded.reachable_redis(broker):
        yield database, broker
        return
    if os.environ.get("CI") and os.environ.get("SETPOINT_TEST_REQUIRE_SERVERS"):
        pytest.fail(f"no PostgreSQL at {database} or no Redis at {broker}, and CI requires them")
    with embedded.running(tmp_path_factory.mktemp("embedded")) as services:
        yield services.database_url, services.broker_url


@contextlib.contextmanager
def scratch_database(admin: str, purpose: str, migrate: bool = True) -> Iterator[str]:
    """A database of its own on the admin's server (by default migrated to head by Alembic, with the tests'
    kinds), dropped afterwards."""
    name = f"setpoint_{purpose}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            alembic("upgrade", "head", database_url=url)
            create_test_kinds(url)
        yield url
    finally:
        with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def claims_db(servers: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A scratch database for the module's claims (tests/claims.py), named after the module."""
    with scratch_database(servers[0], request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")) as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture(scope="session")
def database_url(servers: tuple[str, str]) -> Iterator[str]:
    """A fresh database for this session, migrated to head by Alembic, dropped afterwards."""
    with scratch_database(servers[0], "test") as url:
        yield url


def alembic(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run the real `alembic` command from the repository root, as an admin would."""
    env = {**os.environ, "SETPOINT_DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"alembic {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def create_test_kinds(url: str) -> None:
    """The tests' own kinds get their tables and triggers the way a user's migration would make them."""
    from sqlalchemy.schema import CreateTable

    from tests.kinds import Flaky, Noop

    engine = make_engine(url)
    with engine.begin() as conn:
        for model in (Flaky, Noop):
            conn.execute(CreateTable(model.__table__))  # type: ignore[attr-defined]
            conn.execute(text(triggers.attach(model.__tablename__, model.kind)))
            conn.execute(text(triggers.grant(model.__tablename__)))
    engine.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def broker_url(servers: tuple[str, str]) -> str:
    """The Redis the tests use; each stack has a queue of its own there (stack_env), so nothing is flushed."""
    return servers[1]


def stack_env(database_url: str, broker_url: str, state_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment the real processes run with: fast ticks and short backoff, so tests stay short."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env.update(
        {
            "SETPOINT_DATABASE_URL": database_url,
            "SETPOINT_BROKER_URL": broker_url,
            "SETPOINT_CONTROLLERS": "tests.kinds",
            # A queue of its own, so test runs sharing a Redis never take each other's messages.
            "SETPOINT_QUEUE": f"setpoint-test-{uuid.uuid4().hex[:8]}",
            "SETPOINT_TICK_SECONDS": "0.2",
            "SETPOINT_LEADER_RETRY_SECONDS": "0.5",
            "SETPOINT_BACKOFF_BASE_SECONDS": "0.5",
            "SETPOINT_BACKOFF_MAX_SECONDS": "5",
            "SETPOINT_QUICK_RETRY_MAX_SECONDS": "3",
            "SETPOINT_SOFT_TIME_LIMIT_SECONDS": "3",
            "SETPOINT_TIME_LIMIT_SECONDS": "5",
            "SETPOINT_STATE_DIR": str(state_dir),
            "SETPOINT_WORKER_METRICS_PORT": "0",
            "SETPOINT_SCHEDULER_METRICS_PORT": "0",
            "SETPOINT_CRASHLOOP_BASE_SECONDS": "0.5",
            "SETPOINT_CRASHLOOP_MAX_SECONDS": "4",
            "SETPOINT_ROLLOUT_MIN_READY_SECONDS": "0.3",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(overrides)
    return env


class Process:
    """A real Setpoint process (scheduler or worker) whose output goes to a log file for failure reports."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, timeout_s: float = 20) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait()
        self._out.close()

    def kill(self) -> None:
        """SIGKILL the process and every child it started (a host gone, as far as it is concerned)."""
        os.killpg(self.popen.pid, 9)
        self.popen.wait()
        self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_scheduler(env: dict[str, str], log: Path) -> Process:
    return Process([sys.executable, "-m", "scheduler"], env, log)


def start_worker(env: dict[str, str], log: Path, name: str = "w1", concurrency: int = 2) -> Process:
    return Process(worker_argv(concurrency, name), env, log)


@pytest.fixture(scope="session")
def stack(database_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One real scheduler and one real Celery worker (prefork, 2 processes), shared by the end-to-end tests."""
    logs = tmp_path_factory.mktemp("stack")
    env = stack_env(database_url, broker_url, logs / "state")
    scheduler = start_scheduler(env, logs / "scheduler.log")
    worker = start_worker(env, logs / "worker.log")
    try:
        wait_for(lambda: "ready." in worker.output() or worker.popen.poll() is not None, 60, "worker ready")
        assert worker.popen.poll() is None, worker.output()
        yield env
    finally:
        scheduler.stop()
        worker.stop()
        stop_replicas(Path(env["SETPOINT_STATE_DIR"]))
        for process in (scheduler, worker):
            if "Traceback" in process.output():
                print(f"--- {process.log.name} ---\n{process.output()[-5000:]}")


@pytest.fixture
def unique() -> Iterator[str]:
    """A resource name no other test uses; any workload replica left under that name is killed afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    kill_replicas(name)


def stop_replicas(state_dir: Path) -> None:
    """Stop every workload replica recorded under a stack's state folder (once its worker is gone)."""
    from controllers import processes

    for folder in (state_dir / "workloads").glob("*"):
        for replica in processes.observe(str(state_dir), folder.name, time.time()):
            processes.stop(replica, grace_s=0)


def replicas_of(workload: str) -> list[psutil.Process]:
    """The live processes started as replicas of `workload`, found by their environment."""
    found = []
    for process in psutil.process_iter():
        try:
            env = process.environ()
            if env.get("SETPOINT_WORKLOAD") == workload and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def kill_replicas(prefix: str) -> None:
    for process in psutil.process_iter():
        try:
            if process.environ().get("SETPOINT_WORKLOAD", "").startswith(prefix):
                process.kill()
        except psutil.Error:
            continue


@pytest.fixture
def fresh(servers: tuple[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """A migrated database and a Celery queue of this test's own, for tests that start, stop and kill their
    own schedulers and workers. Yields the processes' environment."""
    admin, broker_url = servers
    with scratch_database(admin, "fresh") as url:
        try:
            yield stack_env(url, broker_url, tmp_path / "state")
        finally:
            stop_replicas(tmp_path / "state")
