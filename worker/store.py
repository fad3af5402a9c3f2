"""The two statements a reconcile sends to PostgreSQL: one to lock and read, one to record and unlock.

A no-op reconcile costs exactly these two round trips. The lock is a session advisory lock on the
connection the reconcile holds: if the worker dies at any line, PostgreSQL drops the connection and
the lock with it, so a killed reconcile never leaves its resource locked.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

LOCK_KEY = "hashtextextended(:kind || '/' || :name, 0)"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What one reconcile starts from: whether it holds the lock, the desired row and the status row."""

    locked: bool
    desired: dict[str, Any] | None
    status: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class StatusUpdate:
    observed_generation: int | None
    ready: bool
    phase: str
    conditions: list[dict[str, Any]]
    observed: dict[str, Any]
    drift: list[dict[str, Any]]
    consecutive_failures: int
    last_error: str | None
    last_success_at: datetime | None
    next_reconcile_at: datetime | None
    interval_seconds: int
    release_claim: bool
    """False while a Celery retry of the same message is on its way, so the scheduler does not send another."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    generation: int | None
    started_at: datetime
    finished_at: datetime
    outcome: str
    actions: list[str]
    error: str | None
    worker: str | None
    task_id: str | None
    attempt: int

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


def begin(conn: Connection, table: str, kind: str, name: str) -> Snapshot:
    row = conn.execute(
        text(
            f"SELECT pg_try_advisory_lock({LOCK_KEY}) AS locked,"
            f" (SELECT to_jsonb(d) FROM {table} AS d WHERE d.name = :name) AS desired,"
            " (SELECT to_jsonb(s) FROM statuses AS s WHERE s.kind = :kind AND s.name = :name) AS status"
        ),
        {"kind": kind, "name": name},
    ).one()
    return Snapshot(bool(row.locked), row.desired, row.status)


def unlock(conn: Connection, kind: str, name: str) -> None:
    conn.execute(text(f"SELECT pg_advisory_unlock({LOCK_KEY})"), {"kind": kind, "name": name})


_RUN = """INSERT INTO runs (kind, name, generation, started_at, finished_at, duration_ms, outcome, actions,
                     error, worker, task_id, attempt)
     VALUES (:kind, :name, :generation, :started_at, :finished_at, :duration_ms, :outcome, :actions,
             :error, :worker, :task_id, :attempt)"""

_FINISH = f"""
WITH status AS (
    UPDATE statuses SET
        observed_generation = :observed_generation, ready = :ready,
        phase = CASE WHEN deleted_at IS NOT NULL THEN 'Deleting' ELSE :phase END,
        conditions = :conditions, observed = :observed, drift = :drift,
        consecutive_failures = :consecutive_failures, last_error = :last_error,
        last_reconcile_at = :finished_at, last_success_at = :last_success_at,
        interval_seconds = :interval_seconds,
        -- a change or a delete that landed while we worked is reconciled at once, not next period
        next_reconcile_at = CASE
            WHEN generation IS DISTINCT FROM :observed_generation OR deleted_at IS NOT NULL THEN now()
            ELSE :next_reconcile_at END,
        enqueued_at = CASE WHEN :release_claim THEN NULL ELSE enqueued_at END
    WHERE kind = :kind AND name = :name
), run AS ({_RUN})
SELECT pg_advisory_unlock({LOCK_KEY})
"""

_FINISH_DELETE = f"""
WITH status AS (DELETE FROM statuses WHERE kind = :kind AND name = :name AND deleted_at IS NOT NULL),
run AS ({_RUN})
SELECT pg_advisory_unlock({LOCK_KEY})
"""

_JSON = ("conditions", "observed", "drift", "actions")


def finish(conn: Connection, kind: str, name: str, update: StatusUpdate | None, run: RunRecord) -> None:
    """Record the run and the new status (or, with update None, forget the torn-down resource), then unlock."""
    params: dict[str, Any] = {"kind": kind, "name": name, "duration_ms": run.duration_ms}
    params.update(dataclasses.asdict(run))
    sql = _FINISH_DELETE
    if update is not None:
        params.update(dataclasses.asdict(update))
        sql = _FINISH
    statement = text(sql).bindparams(*(bindparam(k, type_=JSONB) for k in _JSON if k in params))
    conn.execute(statement, params)
