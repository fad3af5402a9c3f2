"""Healing at the speed of the event (issue 12): tamper → healed for Files, SIGKILL → replacement running for
Workload replicas (beside supervisord), and the idle cost of watching many files, each with watching on and with
polling alone (SETPOINT_WATCH=false), measured on stacks of their own (bench/heal_stack.py) in the same run."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench import heal_stack, processes, replicas, servers
from bench.heal_stack import ManagedFile
from bench.stats import Latency
from bench.usage import Sampler, Usage

POLL_S = 0.001
"""How often the benchmark looks at a tampered file (one tamper at a time): a stat, which makes no inotify
event for the watcher to sift, and a read only once the stat has changed."""
SPREAD_POLL_S = 0.002
"""How often it looks at every tampered file when tampers overlap (polling alone)."""
PAUSE_S = (0.02, 0.05)
"""A random pause (seconds) before each tamper or kill done one at a time."""
WATCHED_INTERVAL_S = 300
"""The interval of the watched Files and Workloads: polling cannot be what heals them."""
IDLE_INTERVAL_S = 3600
HEAL_TIMEOUT_S = 20.0


@dataclasses.dataclass(frozen=True)
class HealPlan:
    files: int
    """Files tampered, each once, with watching on; the same number with polling alone."""
    poll_files: int
    """Of those, the ones tampered with again with watching off (fewer: at a short interval, every File and
    Workload polled is a reconcile each interval, a load that must stay well within the worker's capacity)."""
    poll_interval_s: int
    """The interval of those Files and the Workloads with watching off (short, so polling is measured in
    seconds)."""
    workloads: int
    """One-replica Workloads on each stack, each replica killed `kill_rounds` times with watching on."""
    kill_rounds: int
    supervised: int
    """Programs under supervisord, each killed once."""
    idle_files: int
    idle_window_s: float


@dataclasses.dataclass(frozen=True)
class Idle:
    """A worker holding `files` converged Files that nobody touches, over `window_s` seconds."""

    watching: bool
    files: int
    folders: int
    inotify_watches: int
    """Held by the worker's main process (from /proc): the watcher's, one per folder."""
    threads: int
    """Threads of the worker's main process (watchdog runs one per watched folder)."""
    window_s: float
    usage: Usage
    """The worker's main process and its pool together."""
    main_rss_mb: float = 0.0
    """The main process alone (where the watcher lives) at the window's end: the pool's memory grows with the
    reconciles it has done, which differ between a worker that converged the Files and one started later."""


@dataclasses.dataclass(frozen=True)
class Healing:
    files: int
    watched_interval_s: float
    poll_interval_s: float
    tamper_watching: Latency
    tamper_polling: Latency
    kill_watching: Latency
    kill_polling: Latency
    supervisord: Latency
    idle: list[Idle]
    """With watching on, then off."""
    duration_s: float

    @property
    def tamper_gain(self) -> tuple[float, float]:
        """How many times faster watching heals a tampered file than polling at `poll_interval_s`: p50, p99."""
        return _gain(self.tamper_polling, self.tamper_watching)

    @property
    def kill_gain(self) -> tuple[float, float]:
        return _gain(self.kill_polling, self.kill_watching)

    @property
    def supervisord_gain(self) -> tuple[float, float]:
        """supervisord's time to replace a killed program over Setpoint's (watching): p50, p99."""
        return _gain(self.supervisord, self.kill_watching)


def _gain(slow: Latency, fast: Latency) -> tuple[float, float]:
    return slow.p50_s / fast.p50_s, slow.p99_s / fast.p99_s


def measure(
    dbs: servers.Databases, broker_url: str, tag: str, logs: Path, plan: HealPlan, log: Callable[[str], None]
) -> Healing:
    """One stack, its worker watching first, then another on the same node with watching off; supervisord beside
    it. Each heals the same Files and replicas; only the Files that are tampered with and the Workloads get the
    short interval, and only for polling alone."""
    started = time.monotonic()
    rng = random.Random(12)
    with contextlib.ExitStack() as exit:
        supervisor = replicas.Supervisord(exit, logs, plan.supervised)
        stack = heal_stack.start(
            exit, dbs, broker_url, tag, logs, "heal", watch=True, files=plan.files, idle_files=plan.idle_files,
            interval_s=WATCHED_INTERVAL_S, idle_interval_s=IDLE_INTERVAL_S, workloads=plan.workloads,
        )  # fmt: skip
        total = plan.files + plan.idle_files + plan.workloads
        stack.wait_converged(60 + total / 20)
        stack.wait_settled(60 + total / 20)
        folders = min(heal_stack.FOLDERS, plan.files + plan.idle_files) + plan.workloads
        stack.wait_watching(folders, 30)
        log(f"{plan.files + plan.idle_files:,} Files and {plan.workloads} Workloads converged, watched")
        idle_watching = measure_idle(stack, plan, watching=True)
        with replicas.killing_supervised(supervisor, random.Random(rng.random())) as theirs:
            tamper_watching = Latency.of(tamper_one_by_one(stack.files, rng))
            log(f"{plan.files} tampers healed with watching on")
            ours = replicas.kill_one_by_one(stack, plan.kill_rounds, rng)
        log(f"{len(ours)} replicas and {len(theirs)} supervisord programs killed and replaced")
        stack.restart_worker(exit, watch=False)
        stack.wait_settled(60)
        idle_polling = measure_idle(stack, plan, watching=False)
        polled = stack.files[: plan.poll_files]
        stack.set_interval(polled, plan.poll_interval_s)
        stack.wait_converged(60 + plan.files / 20)
        tamper_polling = Latency.of(tamper_spread(polled, plan.poll_interval_s, rng))
        kill_polling = Latency.of(replicas.kill_spread(stack, plan.poll_interval_s, rng))
        log(f"idle costs measured; tampers and kills healed by polling alone at {plan.poll_interval_s} s")
    return Healing(
        plan.files, WATCHED_INTERVAL_S, plan.poll_interval_s, tamper_watching, tamper_polling,
        Latency.of(ours), kill_polling, Latency.of(theirs), [idle_watching, idle_polling], time.monotonic() - started,
    )  # fmt: skip


def tamper_one_by_one(files: list[ManagedFile], rng: random.Random) -> list[float]:
    """Each file tampered once, in random order, one at a time: seconds from the tamper to the content back."""
    took = []
    for file in rng.sample(files, len(files)):
        time.sleep(rng.uniform(*PAUSE_S))
        tampered_at = time.monotonic()
        file.path.write_text("tampered\n")
        tampered = _signature(file.path)
        while not _healed(file, tampered):
            if time.monotonic() - tampered_at > HEAL_TIMEOUT_S:
                raise TimeoutError(f"{file.path} not healed {HEAL_TIMEOUT_S:g}s after a tamper")
            time.sleep(POLL_S)
        took.append(time.monotonic() - tampered_at)
    return took


def tamper_spread(files: list[ManagedFile], over_s: float, rng: random.Random) -> list[float]:
    """Each file tampered once at a random moment of one interval (so at a random point of its own polling
    cycle), their heals awaited together: seconds from each tamper to its content back."""
    start = time.monotonic()
    due = sorted((start + rng.uniform(0, over_s), i) for i in range(len(files)))
    pending: dict[int, tuple[float, tuple[int, int, int] | None]] = {}
    took = []
    while due or pending:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, i = due.pop(0)
            tampered_at = time.monotonic()
            files[i].path.write_text("tampered\n")
            pending[i] = (tampered_at, _signature(files[i].path))
        for i, (tampered_at, tampered) in list(pending.items()):
            if _healed(files[i], tampered):
                took.append(time.monotonic() - tampered_at)
                del pending[i]
            elif time.monotonic() - tampered_at > over_s * 2 + HEAL_TIMEOUT_S:
                raise TimeoutError(f"{files[i].path} not healed by polling at {over_s:g}s")
        time.sleep(SPREAD_POLL_S)
    return took


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        seen = os.stat(path)
    except FileNotFoundError:
        return None
    return seen.st_ino, seen.st_mtime_ns, seen.st_size


def _healed(file: ManagedFile, tampered: tuple[int, int, int] | None) -> bool:
    if _signature(file.path) == tampered:
        return False
    try:
        return file.path.read_text() == file.content
    except FileNotFoundError:
        return False


def measure_idle(stack: heal_stack.HealStack, plan: HealPlan, *, watching: bool) -> Idle:
    """The stack's worker (main process and pool) over `idle_window_s`, all its Files converged and untouched."""
    watches, threads = heal_stack.inotify_watches(stack.worker.pid), _threads(stack.worker.pid)
    sampler = Sampler(processes.family(stack.worker.pid))
    sampler.start()
    time.sleep(plan.idle_window_s)
    usage = sampler.stop()
    main_rss_mb = psutil.Process(stack.worker.pid).memory_info().rss / 2**20
    files = plan.files + plan.idle_files
    return Idle(watching, files, heal_stack.FOLDERS, watches, threads, plan.idle_window_s, usage, main_rss_mb)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))
