"""The ceiling: a bare Celery task doing the database writes of a no-op reconcile, with Setpoint's worker settings.

It reads the status row, writes the same status columns a no-op reconcile writes and inserts a run row, in one
transaction on a plain psycopg connection: no advisory lock, no ORM validation, no controller, no metrics. Its
worker runs as `celery -A bench.bare_worker worker -c 2`, on the same broker with the same settings; the
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

_READ = "SELECT generation, claim FROM statuses WHERE kind = %s AND name = %s"
_WRITE = """UPDATE statuses SET observed_generation = %s, ready = true, phase = 'Ready', conditions = %s,
    observed = '{"value": "present"}', drift = '[]', consecutive_failures = 0, last_error = NULL,
    last_reconcile_at = now(), last_success_at = now(), picked_at = now(),
    next_reconcile_at = now() + interval '1 hour', enqueued_at = NULL
WHERE kind = %s AND name = %s"""
_RECORD = """INSERT INTO runs (kind, name, generation, started_at, finished_at, duration_ms, outcome, actions, worker)
VALUES (%s, %s, %s, now(), clock_timestamp(), 0, 'noop', '[]', %s)"""

_conn: psycopg.Connection | None = None


def make_app(settings: Settings) -> Celery:
    """A Celery app with Setpoint's broker and worker settings whose one task is the bare one."""
    reference = celery_app.make_app(settings)
    app = Celery("bench-bare", broker=settings.broker_url)
    app.conf.update({key: reference.conf[key] for key in SHARED_SETTINGS})
    app.conf.update(task_default_queue=settings.queue, task_routes={TASK: {"queue": settings.queue}})

    @app.task(name=TASK, acks_late=True)
    def bare(kind: str, name: str) -> None:
        global _conn
        if _conn is None or _conn.closed:  # made lazily, so in the pool process, never shared across a fork
            _conn = psycopg.connect(libpq_url(settings.database_url))
        with _conn.transaction():
            row = _conn.execute(_READ, (kind, name)).fetchone()
            generation = row[0] if row else None
            _conn.execute(_WRITE, (generation, CONDITIONS, kind, name))
            _conn.execute(_RECORD, (kind, name, generation, WORKER_NAME))

    return app
