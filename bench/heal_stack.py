"""A Setpoint stack of its own for the healing measurements: a database cloned from the run's template, the real
scheduler and a `-c 2` worker (production settings, watching on or off), a folder of managed files and a state
folder for workload replicas. Everything it starts or makes is registered on the run's ExitStack, so it is
stopped and removed however the run ends (replicas too: they outlive their worker by design)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import processes, servers
from controllers import processes as replicas
from models.database import libpq_url

FOLDERS = 100
"""Files are spread over this many folders, as on a real host (the watcher watches folders, not files)."""

_FILES = """INSERT INTO files (name, path, content, interval_seconds)
SELECT %(prefix)s || lpad(i::text, 6, '0'),
       %(root)s || '/d' || lpad((i %% %(folders)s)::text, 3, '0') || '/' || %(prefix)s || lpad(i::text, 6, '0'),
       'desired ' || i || E'\\n', %(interval_s)s
FROM generate_series(1, %(count)s) AS i"""
_INTERVAL = "UPDATE {table} SET interval_seconds = %s WHERE name = %s"
_WORKLOADS = """INSERT INTO workloads (name, command, replicas, interval_seconds)
SELECT 'w-' || lpad(i::text, 3, '0'), 'sleep 3600', 1, %(interval_s)s FROM generate_series(1, %(count)s) AS i"""
_UNCONVERGED = "SELECT count(*) FROM statuses WHERE observed_generation IS DISTINCT FROM generation OR NOT ready"
_BUSY = """SELECT
    (SELECT count(*) FROM statuses WHERE enqueued_at IS NOT NULL OR next_reconcile_at < now() + interval '60 s'),
    coalesce((SELECT max(finished_at) FROM runs) > now() - interval '1 second', false)"""


@dataclasses.dataclass(frozen=True)
class ManagedFile:
    path: Path
    content: str


@dataclasses.dataclass
class HealStack:
    label: str
    url: str
    env: dict[str, str]
    root: Path
    """The folder the stack's Files live under (FOLDERS folders of them)."""
    state_dir: Path
    logs: Path
    worker: processes.Child
    files: list[ManagedFile]
    """The Files to tamper with (`f-…`); the idle ones (`i-…`) share their folders and are never touched."""
    workloads: list[str]

    def restart_worker(self, exit: contextlib.ExitStack, *, watch: bool) -> None:
        """Stop the worker (its replicas run on) and start another on the same node, watching or not."""
        self.worker.stop()
        self.env = {**self.env, "SETPOINT_WATCH": "true" if watch else "false"}
        self.worker = processes.worker(self.env, self.logs, f"worker-{self.label}-{'watch' if watch else 'poll'}")
        exit.callback(self.worker.stop)
        self.worker.wait_for(processes.WORKER_READY)

    def set_interval(self, files: list[ManagedFile], interval_s: int) -> None:
        """Give `files` and the Workloads another interval (a new generation: each is reconciled), one
        by one over one interval, so that they do not all fall due at once: resources made at different times
        would not, and a batch falling due together makes each wait for the others' reconciles."""
        rows = [("files", file.path.name) for file in files] + [("workloads", name) for name in self.workloads]
        random.Random(len(rows)).shuffle(rows)  # the Workloads spread over the interval too, not bunched at its end
        start = time.monotonic()
        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            for i, (table, name) in enumerate(rows):
                time.sleep(max(0.0, start + i * interval_s / len(rows) - time.monotonic()))
                conn.execute(_INTERVAL.format(table=table), (interval_s, name))  # type: ignore[arg-type]

    def replica_dir(self, workload: str) -> Path:
        return replicas.workload_dir(str(self.state_dir), workload)

    def wait_converged(self, timeout_s: float) -> None:
        """Every File written and every replica running, as status says."""
        _wait(self.url, lambda row: row[0] == 0, _UNCONVERGED, timeout_s, f"{self.label}: resources not converged")

    def wait_settled(self, timeout_s: float) -> None:
        """Nothing due for a minute and nothing reconciled for a second: what Setpoint's own writes caused (with
        watching on, each write is an event, and each event a reconcile) is over."""
        _wait(self.url, lambda row: row[0] == 0 and not row[1], _BUSY, timeout_s, f"{self.label}: still busy")

    def wait_watching(self, folders: int, timeout_s: float) -> int:
        """Wait until the worker's main process holds `folders` inotify watches; returns how many it holds."""
        deadline = time.monotonic() + timeout_s
        while (found := inotify_watches(self.worker.pid)) < folders:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label}: {found} inotify watches, expected {folders}")
            time.sleep(0.1)
        return found


def start(
    exit: contextlib.ExitStack,
    dbs: servers.Databases,
    broker_url: str,
    tag: str,
    logs: Path,
    label: str,
    *,
    watch: bool,
    files: int,
    idle_files: int,
    interval_s: int,
    idle_interval_s: int,
    workloads: int,
) -> HealStack:
    """Make the stack's database (its Files and Workloads inserted before its processes start) and start them."""
    url = dbs.clone(label.replace("-", "_"))
    exit.callback(dbs.drop, url)
    root = Path(tempfile.mkdtemp(prefix=f"setpoint-bench-{label}-"))
    exit.callback(shutil.rmtree, root, ignore_errors=True)
    for i in range(FOLDERS):
        (root / f"d{i:03d}").mkdir()
    state_dir = logs / f"state-{label}"
    state_dir.mkdir(parents=True, exist_ok=True)
    exit.callback(stop_replicas, state_dir)  # after the worker has stopped (ExitStack runs last in, first out)
    queue = f"{tag}-{label}"
    exit.callback(servers.delete_queues, broker_url, queue)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for prefix, count, every_s in (("f-", files, interval_s), ("i-", idle_files, idle_interval_s)):
            args = {"prefix": prefix, "root": str(root), "folders": FOLDERS, "interval_s": every_s, "count": count}
            conn.execute(_FILES, args)  # type: ignore[arg-type]
        conn.execute(_WORKLOADS, {"interval_s": interval_s, "count": workloads})  # type: ignore[arg-type]
    env = processes.environment(url, broker_url, queue, state_dir, SETPOINT_WATCH="true" if watch else "false")
    scheduler = processes.scheduler(env, logs, f"scheduler-{label}")
    exit.callback(scheduler.stop)
    worker = processes.worker(env, logs, f"worker-{label}-{'watch' if watch else 'poll'}")
    exit.callback(worker.stop)
    worker.wait_for(processes.WORKER_READY)
    scheduler.wait_for(processes.SCHEDULER_LEADING)
    managed = [ManagedFile(root / f"d{i % FOLDERS:03d}" / f"f-{i:06d}", f"desired {i}\n") for i in range(1, files + 1)]
    names = [f"w-{i:03d}" for i in range(1, workloads + 1)]
    return HealStack(label, url, env, root, state_dir, logs, worker, managed, names)


def inotify_watches(pid: int) -> int:
    """The inotify watches a process holds, from /proc/<pid>/fdinfo (one `inotify wd:` line each)."""
    count = 0
    folder = Path(f"/proc/{pid}/fdinfo")
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                count += Path(entry.path).read_text().count("inotify wd:")
    return count


def stop_replicas(state_dir: Path) -> None:
    """Stop every replica recorded under `state_dir` (once its worker is gone, so none is started again)."""
    for folder in (state_dir / "workloads").glob("*"):
        for replica in replicas.observe(str(state_dir), folder.name, time.time()):
            if replica.alive:
                replicas.stop(replica, grace_s=0)


def _wait(url: str, done: Callable[[Any], bool], query: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        while not done(row := conn.execute(query).fetchone()):  # type: ignore[arg-type]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} after {timeout_s:g}s: {row}")
            time.sleep(0.2)
