"""`setpoint up`: the scheduler and a worker together in the foreground, on given or embedded servers."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from setpoint import stack
from setpoint.settings import Settings


def run(settings: Settings, concurrency: int, say: Callable[[str], None]) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with stack.servers(dict(os.environ), Path(settings.data_dir)) as servers:
        where = "embedded" if servers.embedded else "configured"
        say(f"{where} PostgreSQL: {servers.database_url}")
        say(f"{where} Redis:      {servers.broker_url}")
        stack.migrate(servers.database_url)
        say("database migrated to head")
        processes = stack.Processes(servers, concurrency)
        say(f"running: edit desired state with `psql {servers.database_url}`; Ctrl-C stops everything")
        try:
            while not stop.wait(0.5):
                if processes.exited():
                    say("a Setpoint process exited; stopping the rest")
                    return 1
            return 0
        finally:
            processes.stop()
            say("stopped")
