"""Leader election: the active scheduler holds a PostgreSQL advisory lock on a dedicated connection.

If the active scheduler dies, PostgreSQL ends its session and frees the lock, and a standby that keeps
asking takes over. The connection has TCP keepalives so a vanished host is noticed, not waited on.
"""

from __future__ import annotations

import threading

import psycopg

from models.database import CONNECT_ARGS, libpq_url

LOCK_ID = 0x5E7_9017  # any fixed number: one per Setpoint database


class Leadership:
    """Held while the active scheduler's connection is alive; `held()` checks it is still so."""

    def __init__(self, database_url: str) -> None:
        self._url = libpq_url(database_url)
        self._conn: psycopg.Connection | None = None

    def acquire(self, stop: threading.Event, retry_seconds: float) -> bool:
        """Block until this process is the leader (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._url, autocommit=True, **CONNECT_ARGS)
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_ID,)).fetchone()
                if row and row[0]:
                    return True
            except psycopg.OperationalError:
                self.release()
            stop.wait(retry_seconds)
        return False

    def held(self) -> bool:
        try:
            assert self._conn is not None
            self._conn.execute("SELECT 1")
            return True
        except (psycopg.Error, AssertionError):
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # ending the session frees the lock
            finally:
                self._conn = None
