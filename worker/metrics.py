"""Prometheus metrics of reconciles, gathered from every pool process and served by the worker's main process,
and of the main process's watcher (whether watching is degraded, how many folders it watches).

Under prefork each pool process writes its samples to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode) and the main process serves their sum. The main process sets the folder up before the
pool forks, so every pool process, including one started later to replace another, writes there.

Unless the operator names the folder, each worker makes its own under the temporary directory, named for its
main process (pid and start time in clock ticks since boot, which do not move when the clock is stepped): a
clean shutdown removes it, and a worker starting removes those of workers that died without one (SIGKILL, out
of memory), so they do not pile up.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server, values
from prometheus_client.registry import Collector

log = logging.getLogger("setpoint.metrics")

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
FOLDER_PREFIX = "setpoint-metrics-"
_FOLDER = re.compile(re.escape(FOLDER_PREFIX) + r"(?P<pid>\d+)-(?P<ticks>\d+)-[^/]+")
"""`setpoint-metrics-<pid>-<start ticks>-<random>`: whose folder it is, and whether it still runs."""

# Not registered anywhere: in multiprocess mode their samples are read back from the files.
RECONCILES = Counter(
    "setpoint_reconciles",
    "Reconcile messages handled, by kind and outcome: a run's outcome (noop, changed, failed, invalid, paused, "
    "deleted), a skip (busy, superseded, rollout, gone, unknown-kind), or error when the task itself raised.",
    ["kind", "outcome"],
    registry=None,
)
RECONCILE_DURATION = Histogram(
    "setpoint_reconcile_duration_seconds",
    "How long a controller took to observe, plan and act on one resource.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=None,
)
# Set by the watcher in the main process alone (worker/watcher.py): "max" of one process's value is that value.
WATCH_DEGRADED = Gauge(
    "setpoint_watch_degraded",
    "1 while some watched resource of this node goes unwatched (SETPOINT_WATCH_MAX_FOLDERS or inotify's limit "
    "reached; a moment while a dead observer is replaced): it is healed at its interval only. 0 when whole.",
    ["node"],
    multiprocess_mode="max",
    registry=None,
)
WATCHED_FOLDERS = Gauge(
    "setpoint_watched_folders",
    "Folders this node's watcher keeps an inotify watch on (SETPOINT_WATCH_MAX_FOLDERS at most).",
    ["node"],
    multiprocess_mode="max",
    registry=None,
)

_server: WSGIServer | None = None
_made_dir: str | None = None


def serve(registry: Collector, port: int | None, address: str, role: str) -> WSGIServer | None:
    """Serve `registry` on `address`:`port` (0 picks a free one, logged), or nothing when the port is None or
    taken: metrics that cannot be served must not stop reconciles."""
    if port is None:
        return None
    try:
        server, _ = start_http_server(port, addr=address, registry=registry)
    except OSError as error:
        log.warning("metrics not served", extra={"role": role, "address": address, "port": port, "error": str(error)})
        return None
    log.info("serving metrics", extra={"role": role, "address": address, "port": server.server_port})
    return server


def write_to_files(port: int | None) -> None:
    """In the worker's main process before the pool forks: make every process record into a clean folder.

    The folder is PROMETHEUS_MULTIPROC_DIR when the operator sets it (one per worker: it is emptied here), else a
    new temporary one."""
    global _made_dir
    if port is None:
        return
    path = os.environ.get(MULTIPROC_DIR)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):  # a previous run's counts would be added to ours
            os.remove(stale)
    else:
        remove_dead_folders(tempfile.gettempdir())
        pid = os.getpid()
        path = _made_dir = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{pid}-{start_ticks(pid)}-")
        os.environ[MULTIPROC_DIR] = path
    # prometheus_client picks in-memory or file-backed values when first imported, which in a worker is before
    # Celery says it is one. No value exists yet (every metric here has labels), so switching now is safe.
    values.ValueClass = values.MultiProcessValue()


def remove_dead_folders(parent: str) -> None:
    """Remove the folders that workers which died without a clean shutdown made under `parent`.

    Only folders named as this module names them, owned by this user and not symbolic links; a folder whose
    process runs (the same pid with the same start ticks) stays."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        found = _FOLDER.fullmatch(name)
        if found is None or not _ended(int(found["pid"]), int(found["ticks"])):
            continue
        path = os.path.join(parent, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed a dead worker's metrics folder", extra={"path": path, "pid": int(found["pid"])})


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot as the kernel counts it (as controllers/identity.py
    reads it), or None if there is no such process: unlike a wall-clock start time, it does not move when NTP or
    a resumed VM steps the clock, so a pid with its ticks names one process exactly."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return int(line[line.rindex(")") + 2 :].split()[19])  # field 22 of the whole line


def _ended(pid: int, ticks: int) -> bool:
    """Whether the process that started as (`pid`, `ticks`) has ended (its pid is free or another process's)."""
    try:
        return start_ticks(pid) != ticks
    except OSError:  # not ours to inspect: leave its folder alone
        return False


def serve_worker(port: int | None, address: str) -> None:
    """In the worker's main process once the pool runs: serve what all pool processes recorded."""
    global _server
    path = os.environ.get(MULTIPROC_DIR)
    if port is None or not path or _server is not None:
        return
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    _server = serve(registry, port, address, "worker")


def forget_server() -> None:
    """In a new pool process: close the listening socket inherited from the main process, so that a pool
    process outliving its parent does not keep the port."""
    if _server is not None:
        _server.socket.close()


def process_gone(pid: int) -> None:
    """A pool process exits: drop its live gauges (its counters and histograms still count)."""
    path = os.environ.get(MULTIPROC_DIR)
    if path:
        multiprocess.mark_process_dead(pid, path)


def stop_worker() -> None:
    """The worker shuts down: stop serving, and remove the folder if it was made here."""
    global _server, _made_dir
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None
    if _made_dir is not None:
        shutil.rmtree(_made_dir, ignore_errors=True)
        _made_dir = None
