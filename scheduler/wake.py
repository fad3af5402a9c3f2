"""The wake-up: a LISTEN connection that hears the desired tables' NOTIFY and says "claim now"."""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg

from models import triggers
from models.database import CONNECT_ARGS, libpq_url

log = logging.getLogger("setpoint.scheduler")


class Listener:
    """Waits for notifications; after every (re)connect it wakes once, since NOTIFY replays nothing missed."""

    def __init__(self, database_url: str) -> None:
        self._url = libpq_url(database_url)
        self._conn: psycopg.Connection | None = None

    def wait(self, timeout_s: float, wake: Callable[[], None]) -> None:
        """Call `wake` for notifications arriving within `timeout_s` (several at once count as one)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._url, autocommit=True, **CONNECT_ARGS)
                self._conn.execute(f"LISTEN {triggers.CHANNEL}")
                wake()  # resync: whatever changed while we were not listening
            for _ in self._conn.notifies(timeout=timeout_s, stop_after=1):
                wake()
        except psycopg.OperationalError as error:
            log.warning("listen connection lost", extra={"error": str(error)})
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
