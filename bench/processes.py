"""The processes under test: the real scheduler and workers, each in its own session with a log file, stopped
however the run ends (SIGTERM first, the whole process group killed if it lingers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from setpoint.stack import ROOT, worker_argv

STOP_TIMEOUT_S = 15.0


class Child:
    """One process started by the benchmark; `stop()` is safe to call twice."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.label = label
        self.log = logs / f"{label}.log"
        with self.log.open("w") as out:
            self.popen = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = 60.0) -> None:
        """Wait until the log shows `text`; fail with the log's end if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.popen.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label} did not log {text!r} within {timeout_s}s:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def terminate(self) -> None:
        """Ask it to stop (Celery's warm shutdown), without waiting."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # its own group: Celery's pool children, if any are left
        self.popen.wait()


def environment(database_url: str, broker_url: str, queue: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """What Setpoint's processes run with: production defaults, plus this run's servers and queue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env.update(
        {
            "SETPOINT_DATABASE_URL": database_url,
            "SETPOINT_BROKER_URL": broker_url,
            "SETPOINT_QUEUE": queue,
            "SETPOINT_CONTROLLERS": "bench.noop",
            "SETPOINT_STATE_DIR": str(state_dir),
            "SETPOINT_WORKER_METRICS_PORT": "0",  # any free port: never clash with a Setpoint running here
            "SETPOINT_SCHEDULER_METRICS_PORT": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    env.update(extra)
    return env


def scheduler(env: dict[str, str], logs: Path, label: str = "scheduler") -> Child:
    return Child(label, [sys.executable, "-m", "scheduler"], env, logs)


def worker(env: dict[str, str], logs: Path, label: str, app: str = "worker", concurrency: int = 2) -> Child:
    """`celery -A <app> worker -c 2` as Setpoint runs it (prefork, two processes unless told otherwise)."""
    argv = worker_argv(concurrency, f"{label}-{env['SETPOINT_QUEUE']}")
    argv[argv.index("-A") + 1] = app
    # A metrics folder of its own in the run's logs, not a temporary one: on a shared machine, another Setpoint
    # version's clean-up of "dead" temporary folders could take a running worker's files away.
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(logs / f"metrics-{label}")}
    return Child(label, argv, env, logs)


def family(pid: int) -> list[int]:
    """A process and its children (a Celery worker and its pool)."""
    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


def stop_all(children: list[Child]) -> None:
    """Stop several at once: all are asked first, so their shutdowns overlap."""
    for child in children:
        child.terminate()
    for child in children:
        child.stop()


SCHEDULER_LEADING = "setpoint.scheduler leading"
WORKER_READY = "ready."
