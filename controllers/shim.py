"""The replica shim: started by a worker, it detaches, runs one replica and records how it ended.

Like containerd's shim, it lets the worker come and go: `python -m controllers.shim RECORD LOG -- argv…`
(its spec as JSON on stdin, its environment nothing of the worker's) forks a supervisor into a session of
its own (so a worker restart kills neither), which starts the command in a session of its own too (so a
stop can signal its whole process group), as SETPOINT_RUN_AS's user if set, writes RECORD with the pid
and the kernel's start time of that pid (which identify the process beyond pid reuse and whatever the wall
clock does), copies the command's output from a pipe into LOG, rotating it (logbook.py), waits for it,
kills what is left of its group, and writes the exit code to RECORD.exit at once (the worker's watcher is waiting
for it to replace the replica: a log pump held up is drained after). The first process exits as soon as the
supervisor says RECORD exists, through a pipe rather than by polling, so the worker waits for nothing longer.
The shim stays root: only the replica is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from controllers.identity import start_ticks
from controllers.logbook import Logbook

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
PUMP_DRAIN_S = 2.0
"""How long the supervisor waits for the log pump once the replica's group is gone and its exit recorded (a
process that left the group may still hold the pipe: its output is then no longer logged)."""
PUMP_FIRST_S = 0.05
"""How long the exit record waits for the log pump to finish (it does at once, unless a process that left the
group holds the pipe)."""
RECORD_WAIT_S = 10.0
"""How long the first process waits for the supervisor to say the record is written."""


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace a file atomically and privately (0600 whatever the umask): readers see the old or the new
    content, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE_FILE)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, PRIVATE_FILE)
        handle.write(json.dumps(data))
    os.replace(tmp, path)


def exit_file(record: Path) -> Path:
    return record.with_name(record.name + ".exit")


def supervise(record: Path, log: Path, argv: list[str], spec: dict[str, Any], umask: int, ready: int) -> None:
    """Run the replica; close `ready` (the first process's pipe) once its record is written."""
    logbook = Logbook(log, spec.get("log_max_bytes", 10 * 1024 * 1024))
    user = spec.get("user") or {}
    public = {k: v for k, v in spec.items() if k not in ("env", "user")}  # the record holds no environment
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=spec.get("cwd") or "/",
            env=spec["env"],
            start_new_session=True,
            umask=umask,
            **user,
        )
    except (OSError, subprocess.SubprocessError) as error:
        logbook.write(f"setpoint: cannot start {argv[0]!r}: {error}\n".encode())
        logbook.close()
        write(record, {**public, "pid": None})
        write(exit_file(record), {"exit_code": 127, "ran_s": 0.0, "ended_at": time.time()})
        os.close(ready)
        return
    started = time.monotonic()
    assert proc.stdout is not None
    pump = threading.Thread(target=logbook.pump, args=(proc.stdout.fileno(),), daemon=True)
    pump.start()
    write(
        record,
        {
            **public,
            "pid": proc.pid,
            "start_ticks": start_ticks(proc.pid),
            "shim_pid": os.getpid(),
            "shim_start_ticks": start_ticks(os.getpid()),
        },
    )
    os.close(ready)
    code = proc.wait()
    ran_s, ended_at = time.monotonic() - started, time.time()
    # The group outlives its leader (a shell's children): nothing of this replica may run on unrecorded.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    # The pipe's end comes at once with the group's death, and the log then holds the replica's last words when
    # the exit is read (a crash loop's status quotes them). A child that left the group may hold the pipe: it
    # must not hold up the replacement (nor make a quick crash look like a vanished replica, restarted without
    # back-off), so the exit is recorded after PUMP_FIRST_S whatever the pump, which then has the rest of its time.
    pump.join(PUMP_FIRST_S)
    write(exit_file(record), {"exit_code": code, "ran_s": ran_s, "ended_at": ended_at})
    pump.join(PUMP_DRAIN_S)


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: python -m controllers.shim RECORD LOG -- ARGV… < SPEC.json", file=sys.stderr)
        return 2
    record, log, _, *argv = args
    spec = json.loads(sys.stdin.read())
    umask = os.umask(0o077)  # what the shim writes is private; the replica gets the umask it would have had
    waiting, ready = os.pipe()
    if os.fork() > 0:  # the worker's child: done once the supervisor has written the record
        os.close(ready)
        select.select([waiting], [], [], RECORD_WAIT_S)  # readable at EOF: every copy of `ready` closed
        return 0 if Path(record).exists() else 1
    os.close(waiting)
    os.setsid()
    if os.fork() > 0:  # leave the session leader behind: the supervisor can never regain a terminal
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        supervise(Path(record), Path(log), argv, spec, umask, ready)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
