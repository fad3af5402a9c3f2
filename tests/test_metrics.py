"""Prometheus metrics: the worker serves what all its pool processes counted, the scheduler the fleet's state."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from models.database import make_engine
from tests.conftest import Process, start_scheduler, start_worker, wait_for
from tests.helpers import ready_at, sql, status

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(process: Process) -> int:
    """The port a process logged it serves metrics on (it was asked for port 0: any free one), else 0."""
    found = re.search(r"serving metrics .*?\bport=(\d+)", process.output())
    return int(found.group(1)) if found else 0


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def scrape_when(port: int, ready: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until `ready` holds: a process records a fact a moment after the database shows it."""

    def check() -> Samples:
        samples = scrape(port)
        return samples if ready(samples) else {}

    return wait_for(check, 15, what)


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_worker_and_scheduler_serve_metrics_after_a_reconcile(fresh: dict, tmp_path: Path) -> None:
    env = {
        **fresh,
        "SETPOINT_WORKER_METRICS_PORT": "0",
        "SETPOINT_SCHEDULER_METRICS_PORT": "0",
        "SETPOINT_METRICS_REFRESH_SECONDS": "0.2",
    }
    queue = env["SETPOINT_QUEUE"]
    engine = make_engine(env["SETPOINT_DATABASE_URL"])
    scheduler = start_scheduler(env, tmp_path / "scheduler.log")
    worker: Process | None = None
    try:
        scheduler_port = wait_for(lambda: metrics_port(scheduler), 15, "scheduler metrics port logged")
        sql(engine, "INSERT INTO files (name, path, content) VALUES ('m', :p, 'hi')", p=str(tmp_path / "m"))
        # No worker yet: the message waits in the queue and the resource is not ready.
        before = scrape_when(
            scheduler_port,
            lambda s: sample(s, "setpoint_queue_messages", queue=queue) == 1,
            "the queued reconcile in the queue depth",
        )
        assert sample(before, "setpoint_scheduler_leader") == 1
        assert sample(before, "setpoint_resources", kind="File") == 1
        assert sample(before, "setpoint_resources_not_ready", kind="File") == 1

        # A resource that fails every time, to see the failure gauges move.
        sql(
            engine,
            "INSERT INTO flakies (name, counter_path, fail_times, interval_seconds) VALUES ('bad', :c, -1, 3600)",
            c=str(tmp_path / "count"),
        )
        worker = start_worker(env, tmp_path / "worker.log", concurrency=2)
        worker_port = wait_for(lambda: metrics_port(worker), 60, "worker metrics port logged")
        wait_for(lambda: ready_at(engine, "m", 1), 30, "the file reconciled")
        wait_for(lambda: (status(engine, "bad", kind="Flaky") or {}).get("consecutive_failures", 0) >= 2, 30, "fails")

        counted = scrape_when(
            worker_port,
            lambda s: (sample(s, "setpoint_reconciles_total", kind="File", outcome="changed") or 0) >= 1,
            "the reconcile counted",
        )
        assert (sample(counted, "setpoint_reconcile_duration_seconds_count", kind="File") or 0) >= 1
        assert (sample(counted, "setpoint_reconcile_duration_seconds_sum", kind="File") or 0) > 0
        assert (sample(counted, "setpoint_reconciles_total", kind="Flaky", outcome="failed") or 0) >= 1

        # The scheduler reads the fleet's state on a timer: wait for a reading taken after the failures.
        after = scrape_when(
            scheduler_port,
            lambda s: (sample(s, "setpoint_consecutive_failures_max", kind="Flaky") or 0) >= 2,
            "the failures in the scheduler's reading",
        )
        assert sample(after, "setpoint_resources_not_ready", kind="File") == 0
        assert sample(after, "setpoint_resources_failing", kind="File") == 0
        assert sample(after, "setpoint_resources_not_ready", kind="Flaky") == 1
        assert sample(after, "setpoint_resources_failing", kind="Flaky") == 1
        assert (sample(after, "setpoint_consecutive_failures_max", kind="Flaky") or 0) >= 2
        assert (sample(after, "setpoint_enqueue_lag_seconds_count") or 0) >= 2
        assert sample(after, "setpoint_queue_messages", queue=queue) is not None
    finally:
        if worker:
            worker.stop()
        scheduler.stop()
        engine.dispose()
    assert "Traceback" not in scheduler.output() + worker.output()
