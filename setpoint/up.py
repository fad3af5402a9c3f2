"""`setpoint up`: the scheduler and a worker together in the foreground, on given or embedded servers.

It shows what a person watching wants: one line per change, failure or deletion, read from the run history
(`-v` shows the processes' own logs instead). Everything it needs stays in its data folder: the embedded
servers, the workers' state (unless SETPOINT_STATE_DIR says otherwise) and `urls.json`, from which every
command run in the same folder finds its servers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.markup import escape
from sqlalchemy import Engine, text

from controllers import processes
from models.database import make_engine
from setpoint import stack, urls
from setpoint.settings import Settings

POLL_S = 0.5
SHOWN = ("changed", "failed", "invalid", "deleted")
LINE_MAX = 200
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


def run(settings: Settings, concurrency: int, say: Callable[[str], None], verbose: bool = False) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    data_dir = Path(settings.data_dir)
    with stack.servers(dict(os.environ), data_dir) as servers:
        where = "embedded" if servers.embedded else "configured"
        say(f"{where} PostgreSQL: {urls.safe(servers.database_url)}")
        say(f"{where} Redis:      {urls.safe(servers.broker_url)}")
        stack.migrate(servers.database_url)
        say("database migrated to head")
        children = child_settings(settings, verbose)
        state_dir = children["SETPOINT_STATE_DIR"]
        say(
            f"metrics: worker http://{settings.metrics_address}:{children['SETPOINT_WORKER_METRICS_PORT']}/metrics, "
            f"scheduler http://{settings.metrics_address}:{children['SETPOINT_SCHEDULER_METRICS_PORT']}/metrics"
        )
        say(f"workload replicas' state and logs: {state_dir}")
        if servers.embedded:
            written = urls.write(data_dir, servers.database_url, servers.broker_url)
            say(f"`setpoint` commands, the API, workers and schedulers run in this folder use these ({written})")
        engine = make_engine(servers.database_url, pool_size=1, max_overflow=0)
        changes = Changes(engine)
        processes_ = stack.Processes(servers, concurrency, settings=children)
        say(
            f"running: edit desired state with `psql {urls.safe(servers.database_url)}` or `setpoint apply`; "
            "Ctrl-C stops Setpoint (workload replicas keep running)"
        )
        try:
            while not stop.wait(POLL_S):
                if not verbose:
                    for line in changes.new_lines():
                        say(escape(line))
                if processes_.exited():
                    say("a Setpoint process exited; stopping the rest")
                    return 1
            return 0
        finally:
            processes_.stop()
            engine.dispose()
            if servers.embedded:
                urls.remove(data_dir)
            say("stopped")
            for line in replicas_left(state_dir):
                say(escape(line))


def child_settings(settings: Settings, verbose: bool) -> dict[str, str]:
    """What the scheduler and worker run with besides the servers: folders made absolute (they run elsewhere),
    the workers' state in the data folder, metrics on free ports, and quiet logs unless verbose; whatever the
    environment sets explicitly is kept."""
    env = os.environ
    children = {
        "SETPOINT_DATA_DIR": settings.data_dir,
        "SETPOINT_STATE_DIR": settings.state_dir
        if env.get("SETPOINT_STATE_DIR")
        else str(Path(settings.data_dir) / "state"),
        "SETPOINT_LOG_LEVEL": env.get("SETPOINT_LOG_LEVEL") or ("INFO" if verbose else "WARNING"),
    }
    for role in ("WORKER", "SCHEDULER"):
        variable = f"SETPOINT_{role}_METRICS_PORT"
        children[variable] = env.get(variable) or str(_free_port(str(settings.metrics_address)))
    return children


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class Changes:
    """The runs that changed, failed, found invalid or deleted something, one short line each, as they are recorded.

    Run ids are taken when a run is inserted, so a run may commit after one with a higher id: a window of recent
    ids is read again each time, and the ids already shown are skipped."""

    WINDOW = 1000

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.connect() as conn:
            self.after = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM runs")).scalar_one())
        self.shown: set[int] = set()

    def new_lines(self) -> list[str]:
        low = max(self.after, max(self.shown, default=0) - self.WINDOW)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT id, finished_at, kind, name, outcome, actions, error FROM runs "
                        "WHERE id > :low AND outcome = ANY(:shown) ORDER BY id LIMIT 500"
                    ),
                    {"low": low, "shown": list(SHOWN)},
                ).all()
        except Exception:  # the database restarting is the processes' business; the next poll tries again
            return []
        self.shown = {i for i in self.shown if i > low}
        lines = []
        for row in rows:
            if row.id not in self.shown:
                self.shown.add(row.id)
                lines.append(line_for(row))
        return lines


def line_for(run: Any) -> str:
    """`12:01:02 File/motd changed: write 5 bytes to /tmp/x`: when (local time), what, and how."""
    detail = run.error if run.outcome in ("failed", "invalid") else "; ".join(run.actions or [])
    line = f"{_local(run.finished_at)} {run.kind}/{run.name} {run.outcome}" + (f": {detail}" if detail else "")
    line = _UNPRINTABLE.sub(" ", line)
    return line if len(line) <= LINE_MAX else line[: LINE_MAX - 1] + "…"


def _local(at: datetime) -> str:
    return at.astimezone().strftime("%H:%M:%S")


def replicas_left(state_dir: str) -> list[str]:
    """What to tell on stop about workload replicas, which are detached and keep running by design."""
    folder = Path(state_dir) / "workloads"
    left = {}
    for workload in sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []:
        pids = [r.pid for r in processes.observe(state_dir, workload, time.time()) if r.alive and r.pid]
        if pids:
            left[workload] = pids
    if not left:
        return []
    every = [pid for pids in left.values() for pid in pids]
    return [
        f"{len(every)} workload replica(s) keep running (detached by design; the next `setpoint up` here takes "
        "them over):",
        *(f"  {workload}: pid {' '.join(map(str, pids))}" for workload, pids in left.items()),
        f"to stop them: `kill -- {' '.join(f'-{pid}' for pid in every)}` (each replica's process group), or "
        "delete their workloads (`DELETE FROM workloads;`) while `setpoint up` runs",
    ]
