"""Metrics are safe to expose and to scrape: loopback unless told otherwise, scrapes that never reach the
database, and no leftovers from workers that were killed."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from sqlalchemy import text

from models.database import make_engine
from tests.conftest import Process, start_scheduler, start_worker, wait_for
from tests.helpers import sql
from tests.test_metrics import metrics_port, sample, scrape, scrape_when
from worker.metrics import remove_dead_folders, start_ticks


def listening_addresses(pid: int, port: int) -> list[str]:
    """The addresses process `pid` listens on at `port`."""
    return [
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


def metrics_folders(parent: Path) -> set[Path]:
    return set(parent.glob("setpoint-metrics-*"))


def test_metrics_listen_on_loopback_only_by_default(fresh: dict, tmp_path: Path) -> None:
    scheduler = start_scheduler(fresh, tmp_path / "scheduler.log")
    worker = start_worker(fresh, tmp_path / "worker.log", concurrency=1)
    try:
        scheduler_port = wait_for(lambda: metrics_port(scheduler), 15, "scheduler metrics port logged")
        worker_port = wait_for(lambda: metrics_port(worker), 60, "worker metrics port logged")
        assert listening_addresses(scheduler.popen.pid, scheduler_port) == ["127.0.0.1"]
        assert listening_addresses(worker.popen.pid, worker_port) == ["127.0.0.1"]
        assert sample(scrape(scheduler_port), "setpoint_scheduler_leader") is not None
    finally:
        worker.stop()
        scheduler.stop()


def test_metrics_address_opens_them_to_other_hosts(fresh: dict, tmp_path: Path) -> None:
    scheduler = start_scheduler({**fresh, "SETPOINT_METRICS_ADDRESS": "0.0.0.0"}, tmp_path / "scheduler.log")
    try:
        port = wait_for(lambda: metrics_port(scheduler), 15, "scheduler metrics port logged")
        assert listening_addresses(scheduler.popen.pid, port) == ["0.0.0.0"]
    finally:
        scheduler.stop()


def test_scrapes_are_answered_without_touching_the_database(fresh: dict, tmp_path: Path) -> None:
    # One reading when the scheduler starts leading, then none for an hour, however often it is scraped.
    env = {**fresh, "SETPOINT_METRICS_REFRESH_SECONDS": "3600"}
    engine = make_engine(env["SETPOINT_DATABASE_URL"])
    sql(engine, "INSERT INTO files (name, path, content) VALUES ('m', :p, 'hi')", p=str(tmp_path / "m"))
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    try:
        port = wait_for(lambda: metrics_port(scheduler), 15, "scheduler metrics port logged")
        first = scrape_when(port, lambda s: sample(s, "setpoint_resources", kind="File") == 1, "the first reading")
        refreshes = sample(first, "setpoint_metrics_refreshes_total")
        # While nobody can read `statuses`, a scrape that queried it would wait for the lock and come back empty.
        with engine.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE statuses IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with ThreadPoolExecutor(25) as pool:
                answers = list(pool.map(lambda _: scrape(port), range(50)))
            elapsed_s = time.monotonic() - started
        assert [sample(a, "setpoint_resources", kind="File") for a in answers] == [1] * 50
        assert {sample(a, "setpoint_metrics_refreshes_total") for a in answers} == {refreshes}
        assert elapsed_s < 10, f"50 scrapes took {elapsed_s:.1f} s"
    finally:
        scheduler.stop()
        engine.dispose()


def test_a_failed_reading_keeps_the_last_values_is_logged_once_and_recovers(fresh: dict, tmp_path: Path) -> None:
    env = {**fresh, "SETPOINT_METRICS_REFRESH_SECONDS": "0.3"}
    engine = make_engine(env["SETPOINT_DATABASE_URL"])
    sql(engine, "INSERT INTO files (name, path, content) VALUES ('m', :p, 'hi')", p=str(tmp_path / "m"))
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    try:
        port = wait_for(lambda: metrics_port(scheduler), 15, "scheduler metrics port logged")
        first = scrape_when(port, lambda s: sample(s, "setpoint_resources", kind="File") == 1, "the first reading")
        with engine.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE statuses IN ACCESS EXCLUSIVE MODE"))
            stale = scrape_when(
                port,
                lambda s: (
                    (sample(s, "setpoint_metrics_age_seconds") or 0) >= 3
                    and (sample(s, "setpoint_metrics_refreshes_total") or 0)
                    >= (sample(first, "setpoint_metrics_refreshes_total") or 0) + 2
                ),
                "several readings failing while the table is locked",
            )
        assert sample(stale, "setpoint_resources", kind="File") == 1
        assert scheduler.output().count("metrics could not read the fleet's state") == 1
        scrape_when(port, lambda s: (sample(s, "setpoint_metrics_age_seconds") or 9) < 1, "a new reading")
        assert "metrics read the fleet's state again" in scheduler.output()
    finally:
        scheduler.stop()
        engine.dispose()
    assert "Traceback" not in scheduler.output()


def test_a_killed_workers_metrics_folder_is_removed_when_another_starts(fresh: dict, tmp_path: Path) -> None:
    parent = tmp_path / "tmp"
    parent.mkdir()
    env = {**fresh, "TMPDIR": str(parent)}
    # A look-alike of a dead worker's folder that is a link to something else: never followed.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("keep")
    (parent / "setpoint-metrics-999999999-1-link").symlink_to(precious)

    def started(name: str) -> tuple[Process, Path]:
        worker = start_worker(env, tmp_path / f"{name}.log", name=name, concurrency=1)
        wait_for(lambda: metrics_port(worker), 60, f"{name} serving metrics")
        # Named for the worker's main process by its kernel start ticks, which a stepped clock does not move.
        named = f"setpoint-metrics-{worker.popen.pid}-{start_ticks(worker.popen.pid)}-"
        (folder,) = (f for f in metrics_folders(parent) if f.name.startswith(named))
        return worker, folder

    killed, killed_folder = started("w1")
    survivor, survivor_folder = started("w2")
    killed.kill()
    assert killed_folder.exists()  # nothing but the next worker can tell it is dead
    latest: Process | None = None
    try:
        latest, latest_folder = started("w3")
        assert metrics_folders(parent) == {
            parent / "setpoint-metrics-999999999-1-link",
            survivor_folder,
            latest_folder,
        }
        assert (precious / "keep").read_text() == "keep"
    finally:
        survivor.stop()
        if latest:
            latest.stop()
    assert metrics_folders(parent) == {parent / "setpoint-metrics-999999999-1-link"}


def test_a_folder_is_kept_while_the_process_with_its_pid_and_start_ticks_runs(tmp_path: Path) -> None:
    pid = os.getpid()
    ticks = start_ticks(pid)
    assert ticks is not None
    running = tmp_path / f"setpoint-metrics-{pid}-{ticks}-a"
    earlier = tmp_path / f"setpoint-metrics-{pid}-{ticks - 1}-b"  # an ended process that had this pid before
    gone = tmp_path / "setpoint-metrics-999999999-1-c"
    for folder in (running, earlier, gone):
        folder.mkdir()
    remove_dead_folders(str(tmp_path))
    assert metrics_folders(tmp_path) == {running}
