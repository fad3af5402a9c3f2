"""Webhooks, measured: from an event committed to its POST received by a local receiver, and deliveries per second.

A real scheduler process (its dispatcher) on a database of its own, one webhook, and a receiver in this process
(an HTTP server on a thread that answers 204 at once), so the event's clock and the receiver's are the same.
- Latency: one event at a time (an `event_inbox` row, as the statuses triggers write one), from just before its
  INSERT (autocommit) to the moment the receiver has read the POST's body; random pauses between them.
  Target: p99 at most 250 ms (issue 15).
- Throughput: BURST events inserted in one statement, from its commit to the last one received: deliveries per
  second to a fast receiver, each recorded before it is sent and after it is acknowledged.
Run alone with `python -m bench --only webhooks [--quick]`; the full run measures it last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench import processes, servers
from bench.stats import Latency
from models.database import libpq_url

TARGET_P99_S = 0.25
WARMUP = 5
"""Events sent before any is counted: the dispatcher's HTTP connection and the pool's are made lazily."""
SECRET = "bench-webhook-secret-value"


@dataclasses.dataclass(frozen=True)
class Webhooks:
    latency: Latency
    """Event INSERT committed (from just before it) -> POST received, in seconds."""
    burst: int
    burst_s: float
    """From the burst's commit to its last event received."""
    scheduler_cpu_ms: float
    """CPU milliseconds of the scheduler process (the dispatcher) per delivery during the burst: what a busy
    machine does not change, unlike the rate."""

    @property
    def per_s(self) -> float:
        return self.burst / self.burst_s

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "per_s": self.per_s, "target_p99_s": TARGET_P99_S}


class Receiver:
    """Answers 204 at once and notes when each event (by name) arrived, on this process's perf_counter."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver behind a proxy would

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                at = time.perf_counter()
                self.send_response(204)
                self.end_headers()
                with receiver.changed:
                    receiver.arrived[json.loads(body)["name"]] = at
                    receiver.changed.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, name: str, timeout_s: float = 30.0) -> float:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while name not in self.arrived:
                if not self.changed.wait(deadline - time.monotonic()):
                    raise TimeoutError(f"webhook for {name} not received within {timeout_s}s")
            return self.arrived[name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_EMIT = "INSERT INTO event_inbox (kind, name, type, reason, message) VALUES ('File', %s, 'DriftCorrected', 'Drift', %s)"


def latency(conn: psycopg.Connection, receiver: Receiver, samples: int, rng: random.Random) -> Latency:
    took = []
    for i in range(WARMUP + samples):
        name = f"lat-{i}"
        started = time.perf_counter()
        conn.execute(_EMIT, (name, "content differed"))
        arrived = receiver.wait(name)
        if i >= WARMUP:
            took.append(arrived - started)
        time.sleep(rng.uniform(0.01, 0.05))
    return Latency.of(took)


def burst(conn: psycopg.Connection, receiver: Receiver, count: int, scheduler_pid: int) -> tuple[float, float]:
    """Seconds from the commit of `count` events in one statement to the last one received, and the scheduler's
    CPU milliseconds per delivery meanwhile."""
    scheduler = psutil.Process(scheduler_pid)
    cpu = scheduler.cpu_times()
    conn.execute(
        "INSERT INTO event_inbox (kind, name, type, reason, message) "
        "SELECT 'File', 'burst-' || i, 'DriftCorrected', 'Drift', 'content differed' FROM generate_series(1, %s) AS i",
        (count,),
    )
    committed = time.perf_counter()
    took = receiver.wait(f"burst-{count}", max(120.0, count / 20)) - committed
    used = scheduler.cpu_times()
    return took, ((used.user + used.system) - (cpu.user + cpu.system)) * 1000 / count


def _recorded(conn: psycopg.Connection, count: int, timeout_s: float = 30.0) -> None:
    """Every event recorded delivered once (the last acknowledgement may still be on its way to the database)."""
    deadline = time.monotonic() + timeout_s
    query = "SELECT count(*) FILTER (WHERE state = 'delivered' AND attempts = 1), count(*) FROM deliveries"
    while (row := conn.execute(query).fetchone()) != (count, count):
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries (delivered at the first attempt, all): {row}, expected {count} each")
        time.sleep(0.05)


def run(dbs: servers.Databases, broker_url: str, tag: str, logs: Path, samples: int, count: int) -> Webhooks:
    """A database and a scheduler of their own, stopped and dropped however the run ends."""
    url = dbs.clone("webhooks")
    receiver = Receiver()
    scheduler = processes.scheduler(processes.environment(url, broker_url, f"{tag}-webhooks", logs / "state"), logs,
                                    "webhooks-scheduler")  # fmt: skip
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("INSERT INTO secrets (name, value) VALUES ('bench-hook', %s)", (SECRET,))
            conn.execute("INSERT INTO webhooks (name, url, secret) VALUES ('bench', %s, 'bench-hook')", (receiver.url,))
            scheduler.wait_for(processes.SCHEDULER_LEADING)
            measured = latency(conn, receiver, samples, random.Random(0))
            took, cpu_ms = burst(conn, receiver, count, scheduler.pid)
            _recorded(conn, WARMUP + samples + count)
    finally:
        processes.stop_all([scheduler])
        receiver.close()
        servers.delete_queues(broker_url, f"{tag}-webhooks")
        dbs.drop(url)
    return Webhooks(measured, count, took, cpu_ms)


def headlines(w: Webhooks) -> list[str]:
    met = "met" if w.latency.p99_s <= TARGET_P99_S else "MISSED"
    return [
        f"webhooks: event committed -> POST received p50 / p99 {w.latency.p50_s * 1000:.1f} / "
        f"{w.latency.p99_s * 1000:.1f} ms over {w.latency.count} (target p99 <= {TARGET_P99_S * 1000:.0f} ms: {met})",
        f"webhooks: {w.per_s:.0f} deliveries/s to a fast receiver ({w.burst:,} events in {w.burst_s:.2f} s), "
        f"{w.scheduler_cpu_ms:.2f} ms of the scheduler's CPU each",
    ]


@contextlib.contextmanager
def _databases() -> Iterator[tuple[servers.Databases, str, str]]:
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    with servers.running() as found:
        dbs = servers.Databases(found.admin_url, tag)
        try:
            dbs.prepare()
            yield dbs, found.broker_url, tag
        finally:
            dbs.drop_all()


def measure(quick: bool, results: Path) -> list[str]:
    """Measure on servers and a scheduler of its own, write `results`/webhooks.json; returns the headlines."""
    logs = results / "logs"
    (logs / "state").mkdir(parents=True, exist_ok=True)
    date, load_at_start = datetime.now(UTC).isoformat(timespec="seconds"), os.getloadavg()[0]
    with _databases() as (dbs, broker_url, tag):
        found = run(dbs, broker_url, tag, logs, 200 if quick else 1000, 2000 if quick else 10_000)
    machine = {"mode": "quick" if quick else "full", "date": date, "load_average": [load_at_start, os.getloadavg()[0]]}
    (results / "webhooks.json").write_text(json.dumps({**machine, **found.to_json()}, indent=2) + "\n")
    lines = headlines(found)
    print("\n".join(lines), file=sys.stderr)
    return lines
