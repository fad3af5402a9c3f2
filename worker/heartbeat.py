"""The worker's heartbeat: its main process records in `nodes`, every few seconds, that its node is alive.

The scheduler reads the rows: resources on a node silent for SETPOINT_NODE_SILENT_SECONDS are reported
lost (Ready=False, NodeLost), and no more messages are sent to its queue than the one already waiting there.
The times are the database's, so worker clocks never matter.
"""

from __future__ import annotations

import logging
import threading
from importlib import metadata

from sqlalchemy import text

from models.database import make_engine
from setpoint.settings import Settings

log = logging.getLogger("setpoint.heartbeat")

_BEAT = text("""
INSERT INTO nodes (name, started_at, last_seen_at, worker, version) VALUES (:node, now(), now(), :worker, :version)
ON CONFLICT (name) DO UPDATE SET last_seen_at = now(), worker = EXCLUDED.worker, version = EXCLUDED.version,
    started_at = CASE WHEN :first THEN now() ELSE nodes.started_at END
""")


def version() -> str | None:
    try:
        return metadata.version("setpoint")
    except metadata.PackageNotFoundError:
        return None


class Heartbeat:
    """A daemon thread beating for `node` until stopped; a beat that fails (database away) is logged and retried."""

    def __init__(self, settings: Settings, worker: str) -> None:
        self.node = settings.node_name
        self.every_s = settings.node_heartbeat_seconds
        self._params = {"node": self.node, "worker": worker[:255], "version": version()}
        self._engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="setpoint-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.every_s + 5)
        self._engine.dispose()

    def beat(self, *, first: bool = False) -> None:
        with self._engine.begin() as conn:
            conn.execute(_BEAT, {**self._params, "first": first})

    def _run(self) -> None:
        first = True
        while True:
            try:
                self.beat(first=first)
                first = False
            except Exception as error:
                log.warning("heartbeat failed", extra={"node": self.node, "error": f"{type(error).__name__}: {error}"})
            if self._stop.wait(self.every_s):
                return
