"""The ceilings' tasks: bare Celery tasks doing the database writes of Setpoint's work, with its worker settings.

`bench.bare` is the throughput ceiling: it does the writes of a no-op reconcile (reads the generation, writes
the same status columns, inserts a run row) the cheapest way, one autocommit statement, so one round trip
where Setpoint's reconcile makes two: no advisory lock, no ORM validation, no controller, no metrics.
`bench.bare_react` is the last link of the reaction ceiling (bench/bare_chain.py): one status UPDATE.
Their worker runs as `celery -A bench.bare_worker worker -c 2`, on the same broker with the same settings; the
benchmark's own processes also use `make_app` to send tasks (by name) to any queue.
"""

from __future__ import annotations

import json

import psycopg
from celery import Celery

from models.database import libpq_url
from setpoint.settings import Settings
from worker import celery_app

TASK = "bench.bare"
REACT_TASK = "bench.bare_react"
WORKER_NAME = "bench-bare"
"""What the bare task writes in runs.worker, so its rows are told apart from reconciles."""

SHARED_SETTINGS = (
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "worker_cancel_long_running_tasks_on_connection_loss",
    "task_ignore_result",
    "task_soft_time_limit",
    "task_time_limit",
    "worker_send_task_events",
    "task_send_sent_event",
    "broker_connection_retry_on_startup",
    "broker_transport_options",
)
"""Setpoint's Celery settings that shape how a worker takes, runs and acknowledges a task."""

CONDITIONS = json.dumps(
    [
        {"type": "Ready", "status": "True", "reason": "InSync", "message": "generation 1 in sync"},
        {"type": "Synced", "status": "True", "reason": "InSync", "message": "generation 1 in sync"},
    ]
)

RECORD = """WITH status AS (
    UPDATE statuses SET observed_generation = generation, ready = true, phase = 'Ready', conditions = %(conditions)s,
        observed = '{"value": "present"}', drift = '[]', consecutive_failures = 0, last_error = NULL,
        last_reconcile_at = now(), last_success_at = now(), picked_at = now(),
        next_reconcile_at = now() + interval '1 hour', enqueued_at = NULL
    WHERE kind = %(kind)s AND name = %(name)s
    RETURNING generation
)
INSERT INTO runs (kind, name, generation, started_at, finished_at, duration_ms, outcome, actions, worker)
SELECT %(kind)s, %(name)s, generation, now(), clock_timestamp(), 0, 'noop', '[]', %(worker)s FROM status"""
"""A no-op reconcile's writes in one statement: the generation is read by the UPDATE that records it observed."""

OBSERVE = """UPDATE bench_bare_status AS s SET observed_generation = d.generation, ready = true, observed_at = now()
FROM bench_bare AS d WHERE s.name = %(name)s AND d.name = s.name"""
"""The reaction ceiling's one status UPDATE (tables of bench/bare_chain.py): the row's generation observed."""

_conn: psycopg.Connection | None = None


def _connection(database_url: str) -> psycopg.Connection:
    """Made lazily, so in the pool process, never shared across a fork; autocommit, so a statement is a commit."""
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(libpq_url(database_url), autocommit=True)
    return _conn


def record(conn: psycopg.Connection, kind: str, name: str) -> None:
    """What the bare task does: one statement, so one round trip (the connection must be in autocommit)."""
    conn.execute(RECORD, {"conditions": CONDITIONS, "kind": kind, "name": name, "worker": WORKER_NAME})


def make_app(settings: Settings) -> Celery:
    """A Celery app with Setpoint's broker and worker settings whose tasks are the bare ones."""
    reference = celery_app.make_app(settings)
    app = Celery("bench-bare", broker=settings.broker_url)
    app.conf.update({key: reference.conf[key] for key in SHARED_SETTINGS})
    queue = {"queue": settings.queue}
    app.conf.update(task_default_queue=settings.queue, task_routes={TASK: queue, REACT_TASK: queue})

    @app.task(name=TASK, acks_late=True)
    def bare(kind: str, name: str) -> None:
        record(_connection(settings.database_url), kind, name)

    @app.task(name=REACT_TASK, acks_late=True)
    def bare_react(name: str) -> None:
        _connection(settings.database_url).execute(OBSERVE, {"name": name})

    return app
