"""The replica shim: started by a worker, it detaches, runs one replica and records how it ended.

Like containerd's shim, it lets the worker come and go: `python -m controllers.shim RECORD LOG -- argv…`
forks a supervisor into a session of its own (so a worker restart kills neither), which starts the
command in a session of its own too (so a stop can signal its whole process group), writes RECORD with
the pid and the kernel's start time of that pid (which identify the process beyond pid reuse and
whatever the wall clock does), waits for it, kills what is left of its group, and writes the exit code
to RECORD.exit. The first process exits as soon as RECORD exists, so the worker waits for nothing longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from controllers.identity import start_ticks


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace a file atomically: readers see the old or the new content, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def exit_file(record: Path) -> Path:
    return record.with_name(record.name + ".exit")


def supervise(record: Path, log: Path, argv: list[str], spec: dict[str, Any]) -> None:
    with log.open("ab") as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=spec.get("cwd"),
                env=spec["env"],
                start_new_session=True,
            )
        except OSError as error:
            out.write(f"setpoint: cannot start {argv[0]!r}: {error}\n".encode())
            write(record, {**spec, "pid": None})
            write(exit_file(record), {"exit_code": 127, "ran_s": 0.0, "ended_at": time.time()})
            return
    started = time.monotonic()
    write(
        record,
        {
            **spec,
            "pid": proc.pid,
            "start_ticks": start_ticks(proc.pid),
            "shim_pid": os.getpid(),
            "shim_start_ticks": start_ticks(os.getpid()),
        },
    )
    code = proc.wait()
    # The group outlives its leader (a shell's children): nothing of this replica may run on unrecorded.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    write(exit_file(record), {"exit_code": code, "ran_s": time.monotonic() - started, "ended_at": time.time()})


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: python -m controllers.shim RECORD LOG -- ARGV…", file=sys.stderr)
        return 2
    record, log, _, *argv = args
    spec = json.loads(os.environ.pop("SETPOINT_SHIM_SPEC"))
    if os.fork() > 0:  # the worker's child: done once the supervisor has written the record
        deadline = time.monotonic() + 10
        while not Path(record).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        return 0 if Path(record).exists() else 1
    os.setsid()
    if os.fork() > 0:  # leave the session leader behind: the supervisor can never regain a terminal
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        supervise(Path(record), Path(log), argv, spec)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
