"""The process driver behind Workloads (like Nomad's raw_exec): replicas as real OS processes on this host.

Each replica has a record under `<state_dir>/workloads/<name>/`, written by its shim (controllers/shim.py):
its slot, version, pid and that pid's kernel start time; once it ended, `RECORD.exit` holds its exit code
and how long it ran. A pid counts as the replica only while the process with that pid has that start
time, so a reused pid is never taken for a replica. Records outlive the worker, so a restarted worker
finds its replicas again. The folders are 0700 and every file 0600, whatever the umask: records hold no
environment, but logs may hold what replicas print.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from controllers import identity
from controllers.logbook import previous
from controllers.shim import PRIVATE_DIR, exit_file
from setpoint.errors import TransientError

SHIM_START_TIMEOUT_S = 30
SHIM_EXIT_WAIT_S = 5.0
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Replica:
    """One replica process as last recorded and observed."""

    slot: int
    version: str
    record: str
    log: str
    started_at: float
    restarts: int
    """Consecutive quick exits of this slot before this process started (the crash-loop count)."""
    pid: int | None = None
    alive: bool = False
    exit_code: int | None = None
    ran_s: float | None = None
    """How long it ran, once it ended (None if it vanished without its shim's word)."""
    ended_at: float | None = None


def workload_dir(state_dir: str, workload: str) -> Path:
    return Path(state_dir).expanduser().resolve() / "workloads" / workload


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None  # being replaced or removed right now: the next observation sees it


def observe(state_dir: str, workload: str, now: float) -> list[Replica]:
    """Every replica on record for `workload`, alive or ended, oldest first."""
    directory = workload_dir(state_dir, workload)
    found = []
    for record in directory.glob("*.json") if directory.exists() else []:
        data = _read(record)
        if data is None:
            continue
        alive = identity.running(data.get("pid"), data.get("start_ticks"))
        ended = None if alive else _read(exit_file(record))
        found.append(
            Replica(
                slot=data["slot"],
                version=data["version"],
                record=str(record),
                log=data["log"],
                started_at=data["started_at"],
                restarts=data.get("restarts", 0),
                pid=data.get("pid"),
                alive=alive,
                exit_code=(ended or {}).get("exit_code"),
                ran_s=(ended or {}).get("ran_s"),
                ended_at=None if alive else (ended or {}).get("ended_at", now),
            )
        )
    return sorted(found, key=lambda r: (r.started_at, r.record))


def argv_for(command: str) -> list[str]:
    """Run the command directly, unless it uses a shell's features (pipes, variables, quoting, globs…)."""
    if any(ch in command for ch in "|&;<>()$`\\\"'*?[]#~=%{}\n"):
        return ["/bin/sh", "-c", command]
    return command.split()


def start(
    state_dir: str,
    workload: str,
    slot: int,
    version: str,
    command: str,
    env: dict[str, str],
    cwd: str | None,
    restarts: int,
    user: identity.User | None = None,
    log_max_bytes: int = 10 * 1024 * 1024,
) -> Replica:
    """Start one replica through its shim; returns once the replica's record exists.

    The shim gets its spec on stdin and no environment of the worker's (whose database and broker URLs a
    replica could otherwise read in /proc/<its parent>/environ); the replica gets exactly `env`."""
    directory = workload_dir(state_dir, workload)
    make_private(directory)
    started_at = time.time()
    record = directory / f"{slot:04d}-{int(started_at * 1000)}-{uuid.uuid4().hex[:6]}.json"
    log = directory / f"replica-{slot}.log"
    spec = {
        "slot": slot,
        "version": version,
        "log": str(log),
        "log_max_bytes": log_max_bytes,
        "started_at": started_at,
        "restarts": restarts,
        "cwd": cwd,
        "env": env,
        "user": user.popen_args() if user else None,
    }
    done = subprocess.run(
        [sys.executable, "-m", "controllers.shim", str(record), str(log), "--", *argv_for(command)],
        input=json.dumps(spec),
        env=shim_env(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=SHIM_START_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise TransientError(f"the shim for {workload}/{slot} failed: {done.stderr.strip()[-500:]}")
    return next(r for r in observe(state_dir, workload, time.time()) if r.record == str(record))


def shim_env() -> dict[str, str]:
    """All the shim needs to import this very package: where it is, and PATH. Nothing else of the worker's."""
    paths = [str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def make_private(directory: Path) -> None:
    """Create `directory` and its missing parents as 0700 (whatever the umask), and make the folders this
    module owns (the workload's own and `workloads/`) 0700 even if they existed before."""
    missing = []
    level = directory
    while not level.exists():
        missing.append(level)
        level = level.parent
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):
            level.mkdir(mode=PRIVATE_DIR)
    for level in {directory, directory.parent, *missing}:
        os.chmod(level, PRIVATE_DIR)


def stop(replica: Replica, grace_s: float) -> None:
    """SIGTERM the replica's whole process group, SIGKILL what is left after `grace_s`, then forget it."""
    data = _read(Path(replica.record)) or {}
    pid, ticks = data.get("pid"), data.get("start_ticks")
    if pid is not None:
        _signal(identity.group(pid, ticks), signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while identity.group(pid, ticks) and time.monotonic() < deadline:
            time.sleep(0.05)
        while members := identity.group(pid, ticks):
            _signal(members, signal.SIGKILL)
            time.sleep(0.01)
    # Let the shim write its last word first, so nothing of this replica is written after it is forgotten.
    deadline = time.monotonic() + SHIM_EXIT_WAIT_S
    while identity.running(data.get("shim_pid"), data.get("shim_start_ticks")) and time.monotonic() < deadline:
        time.sleep(0.01)
    forget(replica.record)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def forget(record: str) -> None:
    """Drop the record of a replica that has ended."""
    Path(record).unlink(missing_ok=True)
    exit_file(Path(record)).unlink(missing_ok=True)


def log_tail(path: str, lines: int = 10, max_bytes: int = 4096) -> str:
    """The last `lines` lines of a replica's log, reaching into its rotated part when the log was just begun."""
    text = b""
    for part in (Path(path), previous(Path(path))):
        try:
            with open(part, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(handle.tell() - (max_bytes - len(text)), 0))
                text = handle.read() + text
        except OSError:
            continue
        if len(text) >= max_bytes or text.count(b"\n") > lines:
            break
    return "\n".join(text.decode(errors="replace").splitlines()[-lines:])
