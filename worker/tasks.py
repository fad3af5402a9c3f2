"""The one Celery task, `setpoint.reconcile(kind, name)`: what Flower shows, and what the scheduler sends."""

from __future__ import annotations

import random
import socket
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown
from sqlalchemy import Engine

from models.database import make_engine
from setpoint import settings as config
from worker import metrics, registry, watcher
from worker.celery_app import TASK, app
from worker.heartbeat import Heartbeat
from worker.runtime import Request, reconcile

BUSY_RETRY_S = 2.0
"""How soon a message whose resource is being reconciled elsewhere tries again."""
MAX_RETRIES = 100
"""Enough busy retries to outlast any reconcile (time limit / BUSY_RETRY_S), and more than the quick retries."""

_engine: Engine | None = None
_rng = random.Random()


def engine() -> Engine:
    global _engine
    if _engine is None:
        # No check of each connection before use (a round trip per reconcile): `reconcile` retries instead.
        _engine = make_engine(config.get().database_url, pool_size=2, max_overflow=2, pool_pre_ping=False)
    return _engine


@worker_init.connect
def _load_controllers(**_: Any) -> None:
    """Users' kinds (SETPOINT_CONTROLLERS) load once in the main process, whatever the pool."""
    registry.controllers()


@worker_init.connect
def _metrics_to_files(**_: Any) -> None:
    """Before the pool forks, so that every pool process records where the main process reads."""
    metrics.write_to_files(config.get().worker_metrics_port)


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    metrics.serve_worker(config.get().worker_metrics_port, str(config.get().metrics_address))


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A forked pool process must never share its parent's database connections, nor its metrics port, nor its
    random sequence (else every pool process would jitter its resources' due times in step)."""
    if _engine is not None:
        _engine.dispose(close=False)
    metrics.forget_server()
    _rng.seed()


@worker_process_shutdown.connect
def _metrics_of_exited_process(pid: int, **_: Any) -> None:
    metrics.process_gone(pid)


@worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    metrics.stop_worker()


_heartbeat: Heartbeat | None = None


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """In the main process only: the node is alive while its worker is, whatever its pool does."""
    global _heartbeat
    settings = config.get()
    worker = settings.worker_name or getattr(sender, "hostname", None) or socket.gethostname()
    _heartbeat = Heartbeat(settings, worker)
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


_watcher: watcher.Watcher | None = None


@worker_ready.connect
def _start_watcher(**_: Any) -> None:
    """In the main process only, like the heartbeat: one watcher per node, whatever the pool."""
    global _watcher
    _watcher = watcher.start(config.get())


@worker_shutdown.connect
def _stop_watcher(**_: Any) -> None:
    if _watcher is not None:
        _watcher.stop()


def _now() -> datetime:
    return datetime.now(UTC)


@app.task(name=TASK, bind=True, acks_late=True, max_retries=MAX_RETRIES)
def reconcile_task(self: Task, kind: str, name: str, claim: int | None = None) -> str:
    settings = config.get()
    request = Request(
        kind=kind,
        name=name,
        claim=claim,
        attempt=self.request.retries or 0,
        task_id=self.request.id,
        worker=settings.worker_name or self.request.hostname or socket.gethostname(),
    )
    try:
        done = reconcile(request, engine=engine(), settings=settings, now=_now, rng=_rng)
    except Exception:
        metrics.RECONCILES.labels(kind=kind, outcome="error").inc()
        raise
    metrics.RECONCILES.labels(kind=kind, outcome=done.outcome).inc()
    if done.outcome == "busy":
        # Dropping it could strand this message's claim; the other reconcile ends within the time limit.
        raise self.retry(countdown=BUSY_RETRY_S)
    if done.retry is not None:
        # The quick retries are Celery's; longer backoff is the scheduler's (status.next_reconcile_at).
        raise self.retry(countdown=done.retry.countdown_s)
    return done.outcome
