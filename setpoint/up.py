"""`setpoint up`: the scheduler and a worker together in the foreground, on given or embedded servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config

from setpoint import embedded
from setpoint.errors import UsageError
from setpoint.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def migrate(database_url: str) -> None:
    """`alembic upgrade head` on the given database, as the repository's alembic.ini describes it."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@contextlib.contextmanager
def servers(settings: Settings, env: dict[str, str]) -> Iterator[tuple[str, str, bool]]:
    """The URLs to run on: the configured ones, or embedded servers when neither is configured."""
    given = [k for k in ("SETPOINT_DATABASE_URL", "SETPOINT_BROKER_URL") if env.get(k)]
    if len(given) == 2:
        yield settings.database_url, settings.broker_url, False
    elif given:
        missing = ({"SETPOINT_DATABASE_URL", "SETPOINT_BROKER_URL"} - set(given)).pop()
        raise UsageError(f"{given[0]} is set but {missing} is not: set both, or neither to use embedded servers")
    else:
        with embedded.running(Path(settings.data_dir)) as services:
            yield services.database_url, services.broker_url, True


def run(settings: Settings, concurrency: int, say: Callable[[str], None]) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with servers(settings, dict(os.environ)) as (database_url, broker_url, is_embedded):
        say(f"{'embedded' if is_embedded else 'configured'} PostgreSQL: {database_url}")
        say(f"{'embedded' if is_embedded else 'configured'} Redis:      {broker_url}")
        migrate(database_url)
        say("database migrated to head")
        env = {
            **os.environ,
            "SETPOINT_DATABASE_URL": database_url,
            "SETPOINT_BROKER_URL": broker_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        children = [
            subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=ROOT, env=env),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker",
                    "worker",
                    "-c",
                    str(concurrency),
                    "-l",
                    "info",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cwd=ROOT,
                env=env,
            ),
        ]
        say(f"running: edit desired state with `psql {database_url}`; Ctrl-C stops everything")
        try:
            while not stop.wait(0.5):
                if any(child.poll() is not None for child in children):
                    say("a Setpoint process exited; stopping the rest")
                    return 1
            return 0
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
            say("stopped")
