"""The process driver behind Workloads (like Nomad's raw_exec): replicas as real OS processes on this host.

Each replica has a record file, written by its shim (controllers/shim.py), under
`<state_dir>/workloads/<name>/`: its slot, version, pid and the pid's start time, and once it ended its
exit code. A pid counts as the replica only while the process with that pid has that start time, so a
reused pid is never taken for a replica. Records outlive the worker, so a restarted worker finds its
replicas again.
"""

from __future__ import annotations

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

import psutil


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
    ended_at: float | None = None

    @property
    def ran_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


def workload_dir(state_dir: str, workload: str) -> Path:
    return Path(state_dir).resolve() / "workloads" / workload


def _alive(pid: int | None, create_time: float | None) -> bool:
    if pid is None or create_time is None:
        return False
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - create_time) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def observe(state_dir: str, workload: str) -> list[Replica]:
    """Every replica on record for `workload`, alive or dead, oldest first."""
    found = []
    directory = workload_dir(state_dir, workload)
    for record in sorted(directory.glob("*.json")) if directory.exists() else []:
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # a record being replaced or removed right now: the next observation sees it
        alive = _alive(data.get("pid"), data.get("create_time"))
        ended_at = data.get("ended_at")
        if not alive and ended_at is None:
            ended_at = time.time()  # gone without a word (its shim was killed too): count it as ended now
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
                exit_code=data.get("exit_code"),
                ended_at=None if alive else ended_at,
            )
        )
    return sorted(found, key=lambda r: r.started_at)


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
) -> Replica:
    """Start one replica through its shim; returns once the replica's record exists."""
    directory = workload_dir(state_dir, workload)
    directory.mkdir(parents=True, exist_ok=True)
    started_at = time.time()
    record = directory / f"{slot:04d}-{int(started_at * 1000)}-{uuid.uuid4().hex[:6]}.json"
    log = directory / f"replica-{slot}.log"
    spec = {
        "slot": slot,
        "version": version,
        "log": str(log),
        "started_at": started_at,
        "restarts": restarts,
        "cwd": cwd,
        "env": env,
    }
    done = subprocess.run(
        [sys.executable, "-m", "controllers.shim", str(record), str(log), "--", *argv_for(command)],
        env={**os.environ, "SETPOINT_SHIM_SPEC": json.dumps(spec)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the shim for {workload}/{slot} failed: {done.stderr.strip()[-500:]}")
    return next(r for r in observe(state_dir, workload) if r.record == str(record))


def stop(replica: Replica, grace_s: float) -> None:
    """SIGTERM the replica's process group, SIGKILL it after `grace_s`, then forget the replica."""
    record = Path(replica.record)
    data: dict[str, Any] = json.loads(record.read_text()) if record.exists() else {}
    if _alive(data.get("pid"), data.get("create_time")):
        pid = data["pid"]
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(pid, data["create_time"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid, data["create_time"]):
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid, data["create_time"]):
                time.sleep(0.01)
    # Let the shim write its last word before the record goes, so the record does not come back.
    deadline = time.monotonic() + 5
    while _alive(data.get("shim_pid"), data.get("shim_create_time")) and time.monotonic() < deadline:
        time.sleep(0.01)
    record.unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the shim started it as a session (and group) leader
    except ProcessLookupError:
        pass


def forget(replica: Replica) -> None:
    """Drop the record of a replica that has ended."""
    Path(replica.record).unlink(missing_ok=True)


def log_tail(path: str, lines: int = 10, max_bytes: int = 4096) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - max_bytes, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
