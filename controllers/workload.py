"""The Workload kind's controller: `replicas` processes of `command`, healed, scaled and rolled out.

Replicas fill slots 0…replicas-1. Observe reads the replica records and checks health; the pure plan
stops what is extra, starts what is missing (after a crash-loop back-off), and rolls one outdated slot
at a time, starting the new process before stopping the old, so a rollout never leaves none running.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from typing import Any

from controllers import processes
from controllers.processes import Replica
from models.workload import Workload
from setpoint import settings as config
from worker.controller import Action, Controller, Health, InvalidSpec, TransientError

CRASH_WINDOW_S = 10.0
"""A replica that exits sooner than this after starting counts as crashing (as in Kubernetes)."""
MIN_READY_S = 0.3
"""A started replica must still be running this long after start before a rollout stops its predecessor."""
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "PYTHONPATH", "VIRTUAL_ENV")


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A slot whose replica keeps exiting soon after start, waiting out its back-off."""

    slot: int
    restarts: int
    backoff_s: float
    start_at: float
    last_exit_code: int | None
    log_tail: str


@dataclasses.dataclass(frozen=True)
class Check:
    slot: int
    healthy: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class WorkloadState:
    now: float
    replicas: tuple[Replica, ...]
    waiting: tuple[Waiting, ...] = ()
    checks: tuple[Check, ...] = ()

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def ended_in(self, slot: int) -> list[Replica]:
        return [r for r in self.replicas if not r.alive and r.slot == slot]


def version_of(desired: Workload) -> str:
    """What a replica runs: a change of command, environment or directory makes a new version."""
    spec = {"command": desired.command, "env": desired.env, "cwd": desired.working_dir}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def crashloop(last: Replica | None, *, base_s: float, max_s: float) -> tuple[int, float, float]:
    """After `last` ended: (restarts so far, back-off delay, earliest next start) for its slot."""
    if last is None or last.ended_at is None:
        return 0, 0.0, 0.0
    if last.ran_s is None or last.ran_s >= CRASH_WINDOW_S:
        return 0, 0.0, last.ended_at
    restarts = last.restarts + 1
    delay = min(base_s * 2 ** (restarts - 1), max_s)
    return restarts, delay, last.ended_at + delay


@dataclasses.dataclass(frozen=True)
class StartReplica(Action):
    workload: str
    slot: int
    version: str
    command: str
    env: tuple[tuple[str, str], ...]
    cwd: str | None
    restarts: int
    state_dir: str
    forget: tuple[str, ...] = ()
    """Records of ended replicas of this slot, dropped once the new one runs."""
    confirm: bool = False
    """Fail unless the replica is still running shortly after start (a rollout's new replica, before the old
    one is stopped). Other starts do not wait: a replica that exits at once is the crash-loop back-off's job."""

    def run(self) -> None:
        replica = processes.start(
            self.state_dir,
            self.workload,
            self.slot,
            self.version,
            self.command,
            dict(self.env),
            self.cwd,
            self.restarts,
        )
        for record in self.forget:
            processes.forget(Replica(self.slot, "", record, "", 0, 0))
        if not self.confirm:
            return
        deadline = time.monotonic() + MIN_READY_S
        while time.monotonic() < deadline:
            time.sleep(0.05)  # the replica's own start-up, not synchronisation with Setpoint
        ended = [r for r in processes.observe(self.state_dir, self.workload) if r.record == replica.record]
        if ended and not ended[0].alive:
            tail = processes.log_tail(replica.log, lines=5)
            raise TransientError(f"replica {self.slot} exited at once with code {ended[0].exit_code}: {tail}")

    def __str__(self) -> str:
        return f"start replica {self.slot} ({self.version})"


@dataclasses.dataclass(frozen=True)
class StopReplica(Action):
    replica: Replica
    grace_s: float

    def run(self) -> None:
        processes.stop(self.replica, self.grace_s)

    def __str__(self) -> str:
        return f"stop replica {self.replica.slot} (pid {self.replica.pid}, {self.replica.version})"


@dataclasses.dataclass(frozen=True)
class RemoveRecords(Action):
    directory: str

    def run(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __str__(self) -> str:
        return f"remove replica records and logs in {self.directory}"


class WorkloadController(Controller[Workload, WorkloadState]):
    model = Workload
    interval_seconds = 10

    def __init__(self, settings: config.Settings | None = None) -> None:
        self.settings = settings or config.get()

    def validate(self, desired: Workload) -> None:
        if desired.working_dir and not os.path.isdir(desired.working_dir):
            raise InvalidSpec("working_dir", f"{desired.working_dir} is not a directory on this host")
        bad = [k for k, v in desired.env.items() if not isinstance(v, str | int | float) or "=" in k]
        if bad:
            raise InvalidSpec("env", f"values must be strings and names must not contain '=': {bad}")

    def observe(self, desired: Workload) -> WorkloadState:
        now = time.time()
        replicas = tuple(processes.observe(self.settings.state_dir, desired.name))
        waiting = []
        running_slots = {r.slot for r in replicas if r.alive}
        for slot in range(desired.replicas):
            ended = [r for r in replicas if not r.alive and r.slot == slot]
            if slot in running_slots or not ended:
                continue
            last = ended[-1]
            restarts, delay, start_at = crashloop(
                last, base_s=self.settings.crashloop_base_seconds, max_s=self.settings.crashloop_max_seconds
            )
            if restarts:
                waiting.append(Waiting(slot, restarts, delay, start_at, last.exit_code, processes.log_tail(last.log)))
        version = version_of(desired)
        checks = tuple(self._check(desired, r) for r in replicas if r.alive and r.version == version)
        return WorkloadState(now, replicas, tuple(waiting), tuple(c for c in checks if c is not None))

    def plan(self, desired: Workload, actual: WorkloadState) -> list[Action]:
        version = version_of(desired)
        actions: list[Action] = []
        keep: dict[int, Replica] = {}
        alive = actual.alive()
        for slot in sorted({r.slot for r in alive}):
            mine = [r for r in alive if r.slot == slot]  # oldest first
            if slot < desired.replicas:  # keep the newest of the current version, else the newest
                keep[slot] = ([r for r in mine if r.version == version] or mine)[-1]
            actions += [StopReplica(r, desired.stop_grace_seconds) for r in mine if r is not keep.get(slot)]
        waiting = {w.slot: w for w in actual.waiting}
        for slot in range(desired.replicas):
            if slot in keep or (slot in waiting and actual.now < waiting[slot].start_at):
                continue
            restarts = waiting[slot].restarts if slot in waiting else 0
            actions.append(self._start(desired, slot, version, restarts, actual))
        starting = any(isinstance(a, StartReplica) for a in actions)
        if not starting:  # roll outdated slots one at a time: each new replica runs before its old one stops
            for old in (r for _, r in sorted(keep.items()) if r.version != version):
                actions += [
                    self._start(desired, old.slot, version, 0, actual, confirm=True),
                    StopReplica(old, desired.stop_grace_seconds),
                ]
        return actions

    def teardown(self, desired: Workload, actual: WorkloadState) -> list[Action]:
        stops: list[Action] = [StopReplica(r, desired.stop_grace_seconds) for r in actual.replicas]
        directory = processes.workload_dir(self.settings.state_dir, desired.name)
        return [*stops, RemoveRecords(str(directory))] if directory.exists() else stops

    def health(self, desired: Workload, actual: WorkloadState) -> Health:
        version = version_of(desired)
        running = [r for r in actual.alive() if r.version == version and r.slot < desired.replicas]
        if actual.waiting:
            w = actual.waiting[0]
            return Health(
                False,
                "CrashLoopBackOff",
                f"replica {w.slot} exited with code {w.last_exit_code} soon after start; restart "
                f"{w.restarts} in {max(w.start_at - actual.now, 0):.1f}s (back-off {w.backoff_s:g}s); "
                f"log: {w.log_tail[-500:]}",
            )
        sick = [c for c in actual.checks if not c.healthy]
        if sick:
            return Health(False, "Unhealthy", "; ".join(f"replica {c.slot}: {c.detail}" for c in sick))
        if len(running) < desired.replicas:
            return Health(False, "Progressing", f"{len(running)}/{desired.replicas} replicas running")
        checked = " and healthy" if actual.checks else ""
        return Health(True, "Running", f"{len(running)}/{desired.replicas} replicas running{checked}")

    def requeue_after(self, desired: Workload, actual: WorkloadState) -> float | None:
        if self.plan(desired, actual) or not self.health(desired, actual).healthy:
            pending = [w.start_at - actual.now for w in actual.waiting]
            return max(min(pending, default=1.0), 0.2)
        return None

    def describe(self, actual: WorkloadState) -> dict[str, Any]:
        return {
            "replicas": [
                {
                    "slot": r.slot,
                    "pid": r.pid,
                    "alive": r.alive,
                    "version": r.version,
                    "restarts": r.restarts,
                    "exit_code": r.exit_code,
                }
                for r in actual.replicas
            ],
            "waiting": [dataclasses.asdict(w) for w in actual.waiting],
            "checks": [dataclasses.asdict(c) for c in actual.checks],
        }

    def _start(
        self, desired: Workload, slot: int, version: str, restarts: int, actual: WorkloadState, confirm: bool = False
    ) -> StartReplica:
        return StartReplica(
            desired.name,
            slot,
            version,
            desired.command,
            self._env(desired, slot),
            desired.working_dir,
            restarts,
            self.settings.state_dir,
            tuple(r.record for r in actual.ended_in(slot)),
            confirm,
        )

    @staticmethod
    def _env(desired: Workload, slot: int) -> tuple[tuple[str, str], ...]:
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        env.update({k: str(v) for k, v in desired.env.items()})
        env.update(SETPOINT_WORKLOAD=desired.name, SETPOINT_REPLICA=str(slot))
        return tuple(sorted(env.items()))

    def _check(self, desired: Workload, replica: Replica) -> Check | None:
        if desired.health_command:
            env = dict(self._env(desired, replica.slot))
            try:
                done = subprocess.run(
                    processes.argv_for(desired.health_command),
                    env=env,
                    cwd=desired.working_dir,
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                return Check(replica.slot, False, f"health command failed: {error}")
            detail = (done.stdout + done.stderr).strip()[-200:]
            return Check(replica.slot, done.returncode == 0, f"health command exited {done.returncode}: {detail}")
        if desired.health_url:
            url = desired.health_url.replace("{replica}", str(replica.slot))
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - the admin's own URL
                    return Check(replica.slot, 200 <= answer.status < 300, f"GET {url}: {answer.status}")
            except OSError as error:
                return Check(replica.slot, False, f"GET {url}: {error}")
        return None
