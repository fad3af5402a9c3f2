"""Running Setpoint on one machine: the servers it needs and its scheduler and worker processes.

Shared by `setpoint up` and `setpoint demo`: configured servers when SETPOINT_DATABASE_URL and
SETPOINT_BROKER_URL are set, embedded ones when neither is; the schema migrated to head; then the
scheduler and a worker as child processes, stopped with SIGTERM (Celery's warm shutdown).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config

from setpoint import embedded
from setpoint.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
URL_VARIABLES = ("SETPOINT_DATABASE_URL", "SETPOINT_BROKER_URL")


@dataclasses.dataclass(frozen=True)
class Servers:
    database_url: str
    broker_url: str
    embedded: bool


def migrate(database_url: str) -> None:
    """`alembic upgrade head` on the given database, as the repository's alembic.ini describes it."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@contextlib.contextmanager
def servers(env: dict[str, str], data_dir: Path) -> Iterator[Servers]:
    """The configured servers, or embedded ones under `data_dir` when neither URL is configured."""
    given = [k for k in URL_VARIABLES if env.get(k)]
    if len(given) == 2:
        yield Servers(env["SETPOINT_DATABASE_URL"], env["SETPOINT_BROKER_URL"], embedded=False)
    elif given:
        missing = (set(URL_VARIABLES) - set(given)).pop()
        raise UsageError(f"{given[0]} is set but {missing} is not: set both, or neither to use embedded servers")
    else:
        with embedded.running(data_dir) as services:
            yield Servers(services.database_url, services.broker_url, embedded=True)


def worker_argv(concurrency: int, name: str | None = None, banner: bool = True) -> list[str]:
    """`celery -A worker worker` as Setpoint runs it (mingle and gossip add nothing to a reconcile fleet)."""
    quiet = [] if banner else ["--quiet"]
    argv = [sys.executable, "-m", "celery", *quiet, "-A", "worker", "worker", "-c", str(concurrency), "-l", "info"]
    return [*argv, *(["-n", f"{name}@%h"] if name else []), "--without-mingle", "--without-gossip"]


class Processes:
    """The scheduler and a worker, started as children with the given servers and extra settings."""

    def __init__(
        self, servers: Servers, concurrency: int = 2, quiet: bool = False, settings: dict[str, str] | None = None
    ) -> None:
        env = {
            **os.environ,
            **(settings or {}),
            "SETPOINT_DATABASE_URL": servers.database_url,
            "SETPOINT_BROKER_URL": servers.broker_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        out = subprocess.DEVNULL if quiet else None
        worker = worker_argv(concurrency, banner=env.get("SETPOINT_LOG_LEVEL", "INFO") in ("DEBUG", "INFO"))
        self.children = [
            subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=ROOT, env=env, stdout=out, stderr=out),
            subprocess.Popen(worker, cwd=ROOT, env=env, stdout=out, stderr=out),
        ]

    def exited(self) -> bool:
        return any(child.poll() is not None for child in self.children)

    def stop(self, timeout_s: float = 30) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
