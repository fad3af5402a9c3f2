"""Database round trips per no-op reconcile, counted on the wire between a real worker and PostgreSQL.

A worker of its own (bench/wire.py's proxy in its database URL) is sent reconciles of distinct resources: a
first batch warms its connection pool up, then the round trips of the next batch are counted and divided by
the number of reconciles. Connections opened while counting are counted with their handshakes. The bare
task's writes (bench/bare.py) are counted the same way, run in this process on a connection through the proxy.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import psycopg
from celery import Celery
from sqlalchemy.engine import make_url

from bench import bare, resources
from bench.wire import CountingProxy
from models.database import libpq_url
from worker.celery_app import TASK

WORKER_NAME = "bench-roundtrips"
"""SETPOINT_WORKER_NAME of the counted worker, so its runs are told apart."""

_DONE = "SELECT count(*) FROM runs WHERE worker = %s AND started_at >= %s"


@dataclasses.dataclass(frozen=True)
class RoundTrips:
    reconciles: int
    per_reconcile: float
    connections_opened: int
    statements: dict[str, float]
    """Each statement's count per reconcile."""


def proxied(database_url: str, proxy: CountingProxy) -> str:
    """The database URL that goes through the proxy, in plain text (no TLS, no GSS encryption)."""
    url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    url = url.update_query_dict({"sslmode": "disable", "gssencmode": "disable"})
    return url.render_as_string(hide_password=False)


def measure(
    database_url: str, proxy: CountingProxy, app: Celery, queue: str, names: Sequence[str], warmup: int
) -> RoundTrips:
    """Reconcile `warmup` resources uncounted, then the rest of `names` counted."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        _reconcile(conn, app, queue, names[:warmup])
        proxy.take()
        counted = names[warmup:]
        _reconcile(conn, app, queue, counted)
        traffic = proxy.take()
    n = len(counted)
    per = {statement: count / n for statement, count in sorted(traffic.statements.items(), key=lambda s: -s[1])}
    return RoundTrips(n, traffic.round_trips / n, traffic.connections, per)


def measure_bare(database_url: str, proxy: CountingProxy, names: Sequence[str], warmup: int) -> float:
    """Round trips per bare task: its writes for `warmup` of `names` uncounted (psycopg prepares a statement on
    its fifth run, a turn of its own), then for the rest counted, all on one connection."""
    with psycopg.connect(libpq_url(proxied(database_url, proxy)), autocommit=True) as conn:
        for name in names[:warmup]:
            bare.record(conn, resources.KIND, name)
        proxy.take()
        for name in names[warmup:]:
            bare.record(conn, resources.KIND, name)
        traffic = proxy.take()
    return traffic.round_trips / len(names[warmup:])


def _reconcile(conn: psycopg.Connection, app: Celery, queue: str, names: Sequence[str], timeout_s: float = 60) -> None:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    with app.producer_or_acquire() as producer:
        for name in names:
            app.send_task(TASK, args=[resources.KIND, name], queue=queue, producer=producer)
    deadline = time.monotonic() + timeout_s
    while (done := conn.execute(_DONE, (WORKER_NAME, row[0])).fetchone()) and done[0] < len(names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done[0]} of {len(names)} reconciles finished within {timeout_s}s")
        time.sleep(0.1)
