"""The Workload kind's controller: `replicas` processes of `command`, healed, scaled and rolled out.

Replicas fill slots 0…replicas-1. Observe reads the replica records and runs the health checks; the
pure plan stops what is extra, starts what is missing (after a crash-loop back-off), and rolls one
outdated slot per reconcile, starting the new process before stopping the old one, and only once the
previous new replica has run `rollout_min_ready_seconds` and passed its health check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any

from controllers import health, identity, processes
from controllers.health import Check
from controllers.processes import Replica
from models.workload import Workload
from setpoint import errors
from setpoint import settings as config
from worker.controller import Action, Controller, Health, InvalidSpec, TransientError, Watch

CRASH_WINDOW_S = 10.0
"""A replica that exits sooner than this after starting counts as crashing (as in Kubernetes)."""
CONFIRM_S = 0.3
"""A rollout's new replica must still run this long after its start before its predecessor is stopped."""
PROGRESS_RECHECK_S = 0.5
"""How soon to look again while replicas are starting or a rollout is under way."""
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER")
"""What replicas inherit from the worker's environment; everything else comes from the row's `env`."""
DEFAULT_ENV = {"PYTHONUNBUFFERED": "1"}
"""Defaults the row's `env` may override: Python programs' output reaches the replica log as they print it
(`PYTHONUNBUFFERED: ""` gives back block buffering)."""


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
class WorkloadState:
    """What observe found: the replicas on record, the slots backing off, the health checks, and when."""

    now: float
    replicas: tuple[Replica, ...]
    waiting: tuple[Waiting, ...] = ()
    checks: tuple[Check, ...] = ()

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]


def version_of(desired: Workload, run_as: str | None = None) -> str:
    """What a replica runs: a change of command, environment or directory makes a new version, and so does a change
    of SETPOINT_RUN_AS, so replicas started as another user are rolled over to the one now set."""
    spec: dict[str, object] = {"command": desired.command, "env": desired.env, "cwd": desired.working_dir}
    if run_as:
        spec["run_as"] = run_as.strip()
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Backoff:
    restarts: int
    delay_s: float
    start_at: float


def crashloop(last: Replica, *, base_s: float, max_s: float) -> Backoff:
    """When the slot of `last` (ended) may start again: at once, unless it exited soon after its start."""
    ended_at = last.ended_at or 0.0
    if last.ran_s is None or last.ran_s >= CRASH_WINDOW_S:  # ran a good while, or vanished: no crash loop
        return Backoff(0, 0.0, ended_at)
    restarts = last.restarts + 1
    delay = min(base_s * 2 ** (restarts - 1), max_s)
    return Backoff(restarts, delay, ended_at + delay)


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
    confirm: bool = False
    """Fail unless the replica still runs CONFIRM_S after its start (a rollout's new replica, before the old
    one is stopped). Other starts do not wait: a replica that exits at once is the crash-loop back-off's job."""
    user: identity.User | None = None
    log_max_bytes: int = 10 * 1024 * 1024

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
            self.user,
            self.log_max_bytes,
        )
        deadline = time.monotonic() + (CONFIRM_S if self.confirm else 0)
        while time.monotonic() < deadline:
            now = [
                r for r in processes.observe(self.state_dir, self.workload, time.time()) if r.record == replica.record
            ]
            if now and not now[0].alive:
                tail = processes.log_tail(replica.log, lines=5)
                raise TransientError(f"replica {self.slot} exited at once with code {now[0].exit_code}: {tail}")
            time.sleep(0.05)

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
class ForgetEnded(Action):
    records: tuple[str, ...]

    def run(self) -> None:
        for record in self.records:
            processes.forget(record)

    def __str__(self) -> str:
        return f"forget {len(self.records)} ended replica(s)"


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
    host_local = True

    def __init__(self, settings: config.Settings | None = None) -> None:
        self.settings = settings or config.get()
        self.base_env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}

    def validate(self, desired: Workload) -> None:
        identity.user(self.settings.run_as)  # RunAsUnknown / RunAsDenied: the worker's setting, said in status
        bad = [k for k, v in desired.env.items() if not isinstance(v, str | int | float) or "=" in k or not k]
        if bad:
            raise InvalidSpec("env", f"values must be strings and names must not be empty or contain '=': {bad}")
        if desired.working_dir and not os.path.isdir(desired.working_dir):  # may appear later: not permanent
            raise TransientError(f"working_dir {desired.working_dir} is not a directory on this host")

    def watches(self, desired: Workload) -> tuple[Watch, ...]:
        """The replicas' records: each shim writes `<record>.exit` the moment its replica ends, however it died."""
        folder = processes.workload_dir(self.settings.state_dir, desired.name)
        return (Watch(str(folder), names=("*.exit",)),)  # see shim.exit_file

    def observe(self, desired: Workload) -> WorkloadState:
        now = time.time()
        replicas = tuple(processes.observe(self.settings.state_dir, desired.name, now))
        running_slots = {r.slot for r in replicas if r.alive}
        waiting = []
        for slot in range(desired.replicas):
            ended = [r for r in replicas if not r.alive and r.slot == slot]
            if slot in running_slots or not ended:
                continue
            backoff = crashloop(
                ended[-1], base_s=self.settings.crashloop_base_seconds, max_s=self.settings.crashloop_max_seconds
            )
            if backoff.restarts:
                waiting.append(
                    Waiting(
                        slot,
                        backoff.restarts,
                        backoff.delay_s,
                        backoff.start_at,
                        ended[-1].exit_code,
                        processes.log_tail(ended[-1].log),
                    )
                )
        version = version_of(desired, self.settings.run_as)
        try:
            user = identity.user(self.settings.run_as)
        except errors.PermanentError:  # being deleted (else validate said so): check nothing as root
            return WorkloadState(now, replicas, tuple(waiting))
        probe = health.Probe(desired.health_command, desired.health_url, desired.working_dir, user)
        current = {r.slot: dict(self._env(desired, r.slot)) for r in replicas if r.alive and r.version == version}
        return WorkloadState(now, replicas, tuple(waiting), health.check_all(probe, current))

    def plan(self, desired: Workload, actual: WorkloadState) -> list[Action]:
        version = version_of(desired, self.settings.run_as)
        grace = desired.stop_grace_seconds
        actions: list[Action] = []
        keep: dict[int, Replica] = {}
        alive = actual.alive()
        for slot in sorted({r.slot for r in alive}):
            mine = [r for r in alive if r.slot == slot]  # oldest first
            if slot < desired.replicas:  # keep the newest of the current version, else the newest
                keep[slot] = ([r for r in mine if r.version == version] or mine)[-1]
            actions += [StopReplica(r, grace) for r in mine if r is not keep.get(slot)]
        waiting = {w.slot: w for w in actual.waiting}
        for slot in range(desired.replicas):
            if slot in keep or (slot in waiting and actual.now < waiting[slot].start_at):
                continue
            actions.append(self._start(desired, slot, version, waiting[slot].restarts if slot in waiting else 0))
        # Of a slot that has no replica to keep, its last ended one holds its crash-loop count: only older
        # ones go, so a slot that never stays up leaves one record behind, not one per restart.
        latest = {r.slot: r for r in actual.replicas if not r.alive}  # oldest first: the last one wins
        stale = tuple(
            r.record
            for r in actual.replicas
            if not r.alive and (r.slot in keep or r.slot >= desired.replicas or r is not latest[r.slot])
        )
        if stale:
            actions.append(ForgetEnded(stale))
        outdated = [r for _, r in sorted(keep.items()) if r.version != version]
        if outdated and not any(isinstance(a, StartReplica) for a in actions) and self._settled(desired, actual):
            old = outdated[0]  # one slot per reconcile: the new replica first, then the old one goes
            actions += [self._start(desired, old.slot, version, 0, confirm=True), StopReplica(old, grace)]
        return actions

    def _settled(self, desired: Workload, actual: WorkloadState) -> bool:
        """Whether every replica of the new version has run long enough, and passes its check, to roll on."""
        version = version_of(desired, self.settings.run_as)
        fresh = [r for r in actual.alive() if r.version == version]
        failing = {c.slot for c in actual.checks if not c.healthy}
        min_ready = self.settings.rollout_min_ready_seconds
        return all(actual.now - r.started_at >= min_ready and r.slot not in failing for r in fresh)

    def teardown(self, desired: Workload, actual: WorkloadState) -> list[Action]:
        stops: list[Action] = [StopReplica(r, desired.stop_grace_seconds) for r in actual.replicas]
        directory = processes.workload_dir(self.settings.state_dir, desired.name)
        return [*stops, RemoveRecords(str(directory))] if directory.exists() else stops

    def health(self, desired: Workload, actual: WorkloadState) -> Health:
        """Failing (a crash loop, a check failing past its start) is Degraded; starting replicas, a rollout and
        a new replica's check not passing yet within `rollout_min_ready_seconds` are Progressing."""
        version = version_of(desired, self.settings.run_as)
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
        young = {r.slot for r in running if actual.now - r.started_at < self.settings.rollout_min_ready_seconds}
        if any(c.slot not in young for c in sick):
            return Health(False, "Unhealthy", "; ".join(f"replica {c.slot}: {c.detail}" for c in sick))
        outdated = [r for r in actual.alive() if r.version != version and r.slot < desired.replicas]
        if outdated:
            return Health(
                False, "RollingUpdate", f"{len(running)}/{desired.replicas} replicas updated", progressing=True
            )
        if len(running) < desired.replicas:
            return Health(
                False,
                "Progressing",
                f"{len(running)}/{desired.replicas} replicas running the current version",
                progressing=True,
            )
        if sick:
            starting = "; ".join(f"replica {c.slot} starting: {c.detail}" for c in sick)
            return Health(False, "Progressing", starting, progressing=True)
        checked = " and healthy" if actual.checks else ""
        return Health(True, "Running", f"{len(running)}/{desired.replicas} replicas running{checked}")

    def requeue_after(self, desired: Workload, actual: WorkloadState) -> float | None:
        """Look again soon while starting or rolling out, or when a back-off ends; an unhealthy but settled
        workload waits for its interval (its checks are not hammered)."""
        soon = [w.start_at - actual.now for w in actual.waiting]
        version = version_of(desired, self.settings.run_as)
        current = [r for r in actual.alive() if r.version == version and r.slot < desired.replicas]
        starting = len(current) + len(actual.waiting) < desired.replicas
        if self.plan(desired, actual) or starting or len(actual.alive()) > len(current):
            soon.append(PROGRESS_RECHECK_S)
        elif self.health(desired, actual).progressing:  # a new replica's check, until it passes or runs late
            soon.append(PROGRESS_RECHECK_S)
        return max(min(soon), PROGRESS_RECHECK_S / 2) if soon else None

    def outputs(self, desired: Workload, actual: WorkloadState) -> dict[str, Any]:
        """The pids of its running replicas (by slot) and how many run: what a health probe or a file may name."""
        alive = sorted(actual.alive(), key=lambda r: r.slot)
        return {"pids": [r.pid for r in alive], "running": len(alive), "version": version_of(desired)}

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

    def _start(self, desired: Workload, slot: int, version: str, restarts: int, confirm: bool = False) -> StartReplica:
        return StartReplica(
            desired.name,
            slot,
            version,
            desired.command,
            self._env(desired, slot),
            desired.working_dir,
            restarts,
            self.settings.state_dir,
            confirm,
            identity.user(self.settings.run_as),
            self.settings.replica_log_max_bytes,
        )

    def _env(self, desired: Workload, slot: int) -> tuple[tuple[str, str], ...]:
        """The worker's BASE_ENV (HOME and USER those of SETPOINT_RUN_AS's user), DEFAULT_ENV, the row's env, and
        the two SETPOINT_ variables: nothing else of the worker's, whose own SETPOINT_* hold its credentials."""
        env = {**self.base_env, **DEFAULT_ENV}
        with contextlib.suppress(errors.PermanentError):
            user = identity.user(self.settings.run_as)
            if user:
                env.pop("USER", None)
                env.update(HOME=user.home or "/", **({"USER": user.name} if user.name else {}))
        env.update({k: str(v) for k, v in desired.env.items()})
        env.update(SETPOINT_WORKLOAD=desired.name, SETPOINT_REPLICA=str(slot))
        return tuple(sorted(env.items()))
