"""Throughput: no-op reconciles per second with two worker processes, beside the bare-task ceiling.

Setpoint is driven the way an admin would: one UPDATE makes every resource due at once, and the scheduler claims
and sends them in batches while the worker drains them. The ceiling is the bare task (bench/bare.py: the same
writes in one statement), sent by this process for the same resources. Each call is one round; the caller
alternates them and reports medians. Times come from the database's clock, in the rows the tasks write.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from datetime import datetime

import psycopg
from celery import Celery

from bench import bare, resources
from bench.usage import Sampler, database_sessions
from models.database import libpq_url
from setpoint.settings import Settings

POLL_S = 0.25
CLAIM_BATCH: int = Settings.model_fields["claim_batch_size"].default
WARMUP = 10


@dataclasses.dataclass(frozen=True)
class Rate:
    count: int
    first_s: float
    """From the start (the UPDATE, or the first send) to the first task's commit."""
    last_s: float
    """From the start to the last task's commit."""
    cpu_ms_per_task: dict[str, float]
    """CPU milliseconds each watched group of processes spent per task, over the whole run."""

    @property
    def steady_per_s(self) -> float:
        """Completions per second between the first and the last: the workers' pace once work is queued."""
        return (self.count - 1) / (self.last_s - self.first_s)

    @property
    def end_to_end_per_s(self) -> float:
        """Completions per second from the start, the scheduler's claim and send (or this process's) included."""
        return self.count / self.last_s


_MARK_DUE = """WITH due AS (UPDATE statuses SET next_reconcile_at = now() WHERE kind = %s RETURNING 1)
SELECT count(*), now() FROM due"""
_SETPOINT_DONE = """SELECT count(*), extract(epoch FROM min(last_reconcile_at) - %(start)s),
       extract(epoch FROM max(last_reconcile_at) - %(start)s)
FROM statuses WHERE kind = %(kind)s AND last_reconcile_at >= %(start)s"""
_BARE_DONE = """SELECT count(*), extract(epoch FROM min(finished_at) - %(start)s),
       extract(epoch FROM max(finished_at) - %(start)s)
FROM runs WHERE worker = %(worker)s AND started_at >= %(start)s"""


def setpoint(database_url: str, watched: dict[str, list[int]], timeout_s: float) -> Rate:
    """Make every no-op resource due at once and time until each one's status records a new reconcile."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        samplers = _watch(conn, watched)
        row = conn.execute(_MARK_DUE, (resources.KIND,)).fetchone()
        assert row is not None
        count, start = int(row[0]), row[1]
        return _wait(conn, _SETPOINT_DONE, {"start": start, "kind": resources.KIND}, count, samplers, timeout_s)


def ceiling(
    database_url: str, app: Celery, queue: str, names: Sequence[str], watched: dict[str, list[int]], timeout_s: float
) -> Rate:
    """Send the bare task for every resource and time until each one has recorded its run (after a warm-up, so
    that its worker's processes have their connections, as Setpoint's have)."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        for batch in (names[:WARMUP], names):
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            start: datetime = row[0]
            samplers = _watch(conn, watched)
            # Sent as Setpoint's scheduler sends a claim batch: in one Redis pipeline per 500 messages (two commands
            # each, the task and its task-sent event).
            with app.producer_or_acquire() as producer, producer.batch(max_size=2 * CLAIM_BATCH):
                for name in batch:
                    app.send_task(bare.TASK, args=[resources.KIND, name], queue=queue, producer=producer)
            params = {"start": start, "worker": bare.WORKER_NAME}
            rate = _wait(conn, _BARE_DONE, params, len(batch), samplers, timeout_s)
        return rate


def _watch(conn: psycopg.Connection, watched: dict[str, list[int]]) -> dict[str, Sampler]:
    """Start watching the given processes, and the PostgreSQL sessions on this database but our own."""
    groups = {**watched, "PostgreSQL": database_sessions(conn, [conn.info.backend_pid])}
    samplers = {label: Sampler(pids) for label, pids in groups.items() if pids}
    for sampler in samplers.values():
        sampler.start()
    return samplers


def _wait(
    conn: psycopg.Connection,
    query: str,
    params: dict[str, object],
    count: int,
    samplers: dict[str, Sampler],
    timeout_s: float,
) -> Rate:
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        if row[0] >= count:
            cpu = {label: sampler.stop().cpu_seconds * 1000 / count for label, sampler in samplers.items()}
            return Rate(int(row[0]), float(row[1]), float(row[2]), cpu)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {row[0]} of {count} tasks finished within {timeout_s}s")
        time.sleep(POLL_S)
