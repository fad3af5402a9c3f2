"""The replica shim: started by a worker, it detaches, runs one replica and records how it ended.

Like containerd's shim, it lets the worker come and go: `python -m controllers.shim RECORD LOG -- argv…`
forks a supervisor into a session of its own (so a worker restart kills neither), which starts the
command in a session of its own too (so a stop can signal the whole process group), writes RECORD with
the pid and start time that identify the process beyond pid reuse, waits for it, and adds its exit code.
The first process exits as soon as RECORD exists, so the worker waits for nothing longer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil


def write(record: Path, data: dict[str, Any]) -> None:
    """Replace RECORD atomically: readers see the old or the new content, never half of it."""
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, record)


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
            write(record, {**spec, "pid": None, "exit_code": 127, "ended_at": time.time()})
            return
    data = {
        **spec,
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "shim_pid": os.getpid(),
        "shim_create_time": psutil.Process().create_time(),
    }
    write(record, data)
    code = proc.wait()
    if record.exists():  # a stop that already removed the record wants no report
        write(record, {**data, "exit_code": code, "ended_at": time.time()})


def main(args: list[str]) -> int:
    record, log, separator, *argv = args
    assert separator == "--", "usage: python -m controllers.shim RECORD LOG -- ARGV…"
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
