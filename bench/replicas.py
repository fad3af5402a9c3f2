"""Replica SIGKILL → a replacement process running: Setpoint's Workloads (watching on, and polling alone) and
supervisord's `autorestart=true` programs, the same `sleep` under each, measured in the same run.

A Setpoint replacement is seen in the replica records (controllers/processes.py: the shim writes a record with
the new pid right after starting it); a supervisord one by scanning /proc for a new child of supervisord running
the program's command, never by asking supervisord, since an RPC call would wake its loop and speed it up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from bench import processes
from bench.heal_stack import HealStack
from controllers import identity
from controllers.workload import CRASH_WINDOW_S

POLL_S = 0.001
SPREAD_POLL_S = 0.002
PAUSE_S = (0.02, 0.05)
KILL_SPACING_S = 0.25
"""With polling alone, kills come on average this far apart (or spread over one interval, if that is longer)."""
OLD_ENOUGH_S = CRASH_WINDOW_S + 0.5
"""A replica younger than CRASH_WINDOW_S that exits counts as crashing and backs off: only older ones are killed."""
SUPERVISED_RUNNING_S = 1.5
"""supervisord's `startsecs` is 1: a program killed sooner would be in back-off, not restarted."""
TIMEOUT_S = 30.0
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Running:
    record: str
    pid: int
    started_at: float


def running_replica(folder: Path, skip: set[str] | None = None) -> Running | None:
    """The live replica on record in a workload's folder (records in `skip` are not read)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if not entry.name.endswith(".json") or (skip is not None and entry.name in skip):
                continue
            try:
                data = json.loads(Path(entry.path).read_text())
            except (OSError, ValueError):
                continue
            if identity.running(data.get("pid"), data.get("start_ticks")):
                return Running(entry.name, data["pid"], data["started_at"])
    return None


def _records(folder: Path) -> set[str]:
    return {name for name in os.listdir(folder) if name.endswith(".json")}


def kill_replica(folder: Path) -> float:
    """SIGKILL the workload's replica (once it is old enough) and time until a new one runs."""
    victim = _wait_for(lambda: running_replica(folder), "a running replica")
    time.sleep(max(0.0, victim.started_at + OLD_ENOUGH_S - time.time()))
    known = _records(folder)
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    while running_replica(folder, skip=known) is None:
        if time.monotonic() - killed_at > TIMEOUT_S:
            raise TimeoutError(f"no replacement in {folder} {TIMEOUT_S:g}s after a SIGKILL")
        time.sleep(POLL_S)
    return time.monotonic() - killed_at


def kill_spread(stack: HealStack, interval_s: float, rng: random.Random) -> list[float]:
    """Every workload's replica killed once, at random moments of a span of at least one interval (a kill lands
    at a random point of its workload's polling cycle either way), replacements awaited together. The span is
    long enough that the restarts (a shim started for each) do not pile up in the worker: a burst of them would
    make polling look slower than it is."""
    over_s = max(interval_s, KILL_SPACING_S * len(stack.workloads))
    folders = [stack.replica_dir(name) for name in stack.workloads]
    victims = [_wait_for(lambda f=f: running_replica(f), "a running replica") for f in folders]  # type: ignore[misc]
    time.sleep(max(0.0, max(v.started_at for v in victims) + OLD_ENOUGH_S - time.time()))
    start = time.monotonic()
    due = sorted((start + rng.uniform(0, over_s), i) for i in range(len(folders)))
    pending: dict[int, tuple[float, set[str]]] = {}
    took = []
    while due or pending:
        while due and due[0][0] <= time.monotonic():
            _, i = due.pop(0)
            known = _records(folders[i])
            pending[i] = (time.monotonic(), known)
            os.kill(victims[i].pid, signal.SIGKILL)
        for i, (killed_at, known) in list(pending.items()):
            if running_replica(folders[i], skip=known) is not None:
                took.append(time.monotonic() - killed_at)
                del pending[i]
            elif time.monotonic() - killed_at > interval_s * 2 + TIMEOUT_S:
                raise TimeoutError(f"no replacement in {folders[i]} by polling at {interval_s:g}s")
        time.sleep(SPREAD_POLL_S)
    return took


class Children:
    """The live children of one process by command line, found by scanning /proc (each pid's parent read once;
    a child's command line read until it has exec'd, so a forked child not yet running its program is not taken
    for it)."""

    def __init__(self, parent: int, prefix: bytes) -> None:
        self.parent = parent
        self.prefix = prefix
        self._others: set[int] = set()
        self._mine: dict[int, bytes | None] = {}
        self.seen: set[int] = set()
        """Every child ever seen running the program (to be sure none is left behind at the end)."""

    def scan(self) -> dict[bytes, int]:
        pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        self._others &= pids
        for pid in pids - self._others - self._mine.keys():
            if _parent(pid) == self.parent:
                self._mine[pid] = None
            else:
                self._others.add(pid)
        found = {}
        for pid in list(self._mine):
            if pid not in pids:
                del self._mine[pid]
                continue
            if self._mine[pid] is None:
                exec_d = _cmdline(pid)
                if exec_d.startswith(self.prefix):
                    self._mine[pid] = exec_d
                    self.seen.add(pid)
            if (command := self._mine[pid]) is not None:
                found[command] = pid
        return found


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Supervisord:
    """supervisord (PyPI's `supervisor`) running `programs` programs, `sleep 3600 + j`, each `autorestart=true`
    with its defaults otherwise (startsecs 1, output to log files); stopped, with its programs, however the run
    ends."""

    def __init__(self, exit: contextlib.ExitStack, logs: Path, programs: int) -> None:
        folder = logs / "supervisord"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "supervisord.conf"
        lines = [
            "[supervisord]", "nodaemon=true", f"logfile={folder / 'supervisord.log'}",
            f"pidfile={folder / 'supervisord.pid'}", f"childlogdir={folder}", "",
        ]  # fmt: skip
        for j in range(programs):
            lines += [f"[program:p{j:03d}]", f"command=sleep {3600 + j}", "autorestart=true", ""]
        config.write_text("\n".join(lines))
        self.commands = [f"sleep\0{3600 + j}\0".encode() for j in range(programs)]
        argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(config)]
        self.child = processes.Child("supervisord", argv, dict(os.environ), logs)
        self.children = Children(self.child.pid, b"sleep\0")
        exit.callback(self._kill_leftovers)
        exit.callback(self.child.stop)  # it stops its programs first

    def wait_running(self) -> dict[bytes, int]:
        def all_running() -> dict[bytes, int] | None:
            found = self.children.scan()
            return found if len(found) == len(self.commands) else None

        found = _wait_for(all_running, "programs running")
        time.sleep(SUPERVISED_RUNNING_S)
        return found

    def kill(self, command: bytes) -> float:
        victim = self.children.scan()[command]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while self.children.scan().get(command, victim) == victim:
            if time.monotonic() - killed_at > TIMEOUT_S:
                raise TimeoutError(f"supervisord did not restart {command!r} within {TIMEOUT_S:g}s")
            time.sleep(POLL_S)
        return time.monotonic() - killed_at

    def _kill_leftovers(self) -> None:
        for pid in self.children.seen:
            if _cmdline(pid).startswith(b"sleep\0"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def kill_one_by_one(stack: HealStack, rounds: int, rng: random.Random) -> list[float]:
    """Each workload's replica killed `rounds` times, in random order, one at a time."""
    took = []
    for _ in range(rounds):
        for name in rng.sample(stack.workloads, len(stack.workloads)):
            time.sleep(rng.uniform(*PAUSE_S))
            took.append(kill_replica(stack.replica_dir(name)))
    return took


@contextlib.contextmanager
def killing_supervised(supervisor: Supervisord, rng: random.Random) -> Iterator[list[float]]:
    """supervisord's programs killed one at a time, in random order, in a thread of their own while the body
    runs (Setpoint's measurements): the two are measured over the same span of time. Yields the samples, all in
    once the body is done."""
    supervisor.wait_running()
    took: list[float] = []
    failed: list[BaseException] = []

    def kill_all() -> None:
        try:
            for command in rng.sample(supervisor.commands, len(supervisor.commands)):
                time.sleep(rng.uniform(*PAUSE_S))
                took.append(supervisor.kill(command))
        except BaseException as error:  # noqa: BLE001 - raised again in the main thread
            failed.append(error)

    thread = threading.Thread(target=kill_all, name="supervisord-kills", daemon=True)
    thread.start()
    yield took
    thread.join()
    if failed:
        raise failed[0]


def _wait_for(find: Callable[[], T | None], what: str, timeout_s: float = TIMEOUT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while not (found := find()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:g}s")
        time.sleep(0.02)
    return found
