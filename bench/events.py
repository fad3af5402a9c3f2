"""Events (issue 15): how soon a status change reaches a client of `GET /v1/events`, and what the statuses
triggers cost a routine no-op reconcile.

Latency: a status write that is news (a File's status made Failed, then Ready again, by SQL as a worker writes it)
is committed, and the clock stops when its event arrives on the SSE stream of a real `setpoint api` process (uvicorn),
through the inbox's NOTIFY, setpoint_publish_events() and the API's one listener. Hot path: the no-op write a
reconcile makes (every column rewritten, only the times moving), over 5,000 status rows in one statement, timed with
the events trigger enabled and disabled, alternately. Mass rollout: what events cost one UPDATE of every row of a
real stack, reconciled to the last one, events on and off alternately (bench/events_rollout.py).

`python -m bench --only events [--quick]` (or `python -m bench.events`) runs this part alone and writes
bench/results/events.md and events.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg

from bench import events_rollout, processes, servers
from bench.stats import Latency
from models.database import libpq_url

NOOP_UPDATE = """
UPDATE statuses SET observed_generation = 1, ready = true, phase = 'Ready', conditions = %(conditions)s,
    observed = %(observed)s, drift = '[]', outputs = COALESCE(NULL, outputs), consecutive_failures = 0,
    last_error = NULL, last_reconcile_at = now(), last_success_at = now(), interval_seconds = 3600,
    next_reconcile_at = now() + interval '1 hour', enqueued_at = NULL
WHERE kind = 'File' AND name = %(name)s
"""
"""What worker/store.py's finishing statement writes for a no-op: the same values, the times moved."""

CONDITIONS = [
    {
        "type": "Ready",
        "status": "True",
        "reason": "InSync",
        "message": "generation 1 in sync",
        "last_transition_time": "2026-12-02T00:00:00+00:00",
    },
    {
        "type": "Synced",
        "status": "True",
        "reason": "InSync",
        "message": "generation 1 in sync",
        "last_transition_time": "2026-12-02T00:00:00+00:00",
    },
]

FAIL = """UPDATE statuses SET phase = 'Failed', ready = false, consecutive_failures = 1, last_error = %(error)s::text,
    last_reconcile_at = now(), conditions = jsonb_build_array(jsonb_build_object('type', 'Ready', 'status', 'False',
    'reason', 'ReconcileError', 'message', %(error)s::text, 'last_transition_time', now()))
WHERE kind = 'File' AND name = %(name)s"""
HEAL = """UPDATE statuses SET phase = 'Ready', ready = true, consecutive_failures = 0, last_error = NULL,
    last_reconcile_at = now(), conditions = %(conditions)s WHERE kind = 'File' AND name = %(name)s"""


@dataclasses.dataclass(frozen=True)
class HotPath:
    """The no-op status write, the database's time per row, with the events trigger and without (quickest rounds)."""

    updates: int
    with_trigger_us: float
    without_trigger_us: float

    @property
    def cost_us(self) -> float:
        return self.with_trigger_us - self.without_trigger_us


@dataclasses.dataclass(frozen=True)
class EventsResults:
    to_sse: Latency
    """Status change committed → its event received on the SSE stream."""
    hot_path: HotPath


def _resource(conn: psycopg.Connection, name: str) -> None:
    conn.execute(
        "INSERT INTO files (name, path, content, interval_seconds) VALUES (%s, %s, 'x', 3600)",
        (name, f"/nonexistent/bench-events/{name}"),
    )
    # Nobody reconciles it (no worker runs here): its status is written as a worker would.
    conn.execute(
        "UPDATE statuses SET next_reconcile_at = NULL, observed_generation = 1, ready = true, phase = 'Ready', "
        "conditions = %s WHERE kind = 'File' AND name = %s",
        (json.dumps(CONDITIONS), name),
    )


def hot_path(database_url: str, updates: int = 5_000, rounds: int = 9) -> HotPath:
    """Time one no-op UPDATE of `updates` status rows (as many reconciles' finishing writes would make, row by row
    through the same trigger) with the trigger on and off, alternately, each in a transaction rolled back so every
    round starts from the same rows; per row, the quickest round of each (the one least disturbed by whatever else
    the machine runs: a CPU cost, not a throughput). One statement, so the client's round trip and the disk's commit
    are not in the figure: what is left is the database's CPU per row."""
    prefix = f"hot-{uuid.uuid4().hex[:8]}-"
    timings: dict[bool, list[float]] = {True: [], False: []}
    params = {"prefix": prefix + "%", "conditions": json.dumps(CONDITIONS), "observed": json.dumps({"n": 1})}
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO files (name, path, content, interval_seconds) "
            "SELECT %(prefix)s || i, '/nonexistent/bench-events/' || i, 'x', 3600 FROM generate_series(1, %(n)s) AS i",
            {"prefix": prefix, "n": updates},
        )
        conn.execute(
            "UPDATE statuses SET next_reconcile_at = NULL, observed_generation = 1, ready = true, phase = 'Ready', "
            "conditions = %(conditions)s, observed = %(observed)s WHERE kind = 'File' AND name LIKE %(prefix)s",
            params,
        )
        conn.execute("DELETE FROM event_inbox WHERE name LIKE %(prefix)s", params)  # their Ready, made just now
        for _ in range(rounds):
            for enabled in (True, False):
                with conn.transaction(force_rollback=True):
                    if not enabled:
                        conn.execute("ALTER TABLE statuses DISABLE TRIGGER setpoint_status_event")
                    started = time.perf_counter()
                    done = conn.execute(NOOP_UPDATE.replace("name = %(name)s", "name LIKE %(prefix)s"), params)
                    timings[enabled].append((time.perf_counter() - started) / updates * 1e6)
                    assert done.rowcount == updates
                    made = conn.execute(
                        "SELECT count(*) FROM event_inbox WHERE name LIKE %(prefix)s", params
                    ).fetchone()
                    assert made is not None and made[0] == 0, "a no-op status write made an event"
        conn.execute("DELETE FROM files WHERE name LIKE %(prefix)s", params)
    return HotPath(updates, min(timings[True]), min(timings[False]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def api(database_url: str, logs: Path) -> Iterator[str]:
    """A real `setpoint api` on a free loopback port; yields its base URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETPOINT_")}
    env.update({"SETPOINT_DATABASE_URL": database_url, "PYTHONPATH": str(processes.ROOT)})
    argv = [sys.executable, "-m", "setpoint.cli", "api", "--port", str(port), "--insecure-no-auth"]
    child = processes.Child("events-api", argv, env, logs)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or child.popen.poll() is not None:
                raise RuntimeError(f"the API did not start: {child.output()[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        child.stop()


def to_sse(database_url: str, base: str, changes: int, warmup: int = 5) -> list[float]:
    """Commit `changes` (after `warmup` uncounted) status transitions one at a time; each one's latency until its
    event is read from one SSE stream."""
    name = f"sse-{uuid.uuid4().hex[:8]}"
    arrived: dict[str, float] = {}
    ready = threading.Event()
    seen = threading.Condition()

    def read() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("GET", f"{base}/v1/events", params={"name": name}, timeout=None) as response,
        ):
            for line in response.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    message = json.loads(line[6:])["message"]
                    with seen:
                        arrived[message] = time.perf_counter()
                        seen.notify_all()

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        _resource(conn, name)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # the stream opens with a comment once it listens (api/events.py); start only then
        if not ready.wait(10):
            raise RuntimeError("the SSE stream did not open")
        latencies = []
        for i in range(warmup + changes):
            error = f"bench failure {i}"
            committed = time.perf_counter()
            conn.execute(FAIL, {"name": name, "error": error})
            with seen:
                if not seen.wait_for(lambda e=error: e in arrived, timeout=10):  # type: ignore[misc]
                    raise TimeoutError(f"event {i} never arrived on the stream")
            if i >= warmup:
                latencies.append(arrived[error] - committed)
            conn.execute(HEAL, {"name": name, "conditions": json.dumps(CONDITIONS)})
            time.sleep(0.01)
    return latencies


def run(database_url: str, logs: Path, changes: int, hot_updates: int = 5_000) -> EventsResults:
    hot = hot_path(database_url, hot_updates)
    with api(database_url, logs) as base:
        latencies = to_sse(database_url, base, changes)
    return EventsResults(Latency.of(latencies), hot)


def lines(results: EventsResults) -> list[str]:
    lat, hot = results.to_sse, results.hot_path
    return [
        f"status change committed → event on the SSE stream: p50 {lat.p50_s * 1000:.1f} ms, "
        f"p99 {lat.p99_s * 1000:.1f} ms, max {lat.max_s * 1000:.1f} ms over {lat.count} changes",
        f"no-op status write, database CPU per row: {hot.with_trigger_us:.2f} µs with the events trigger, "
        f"{hot.without_trigger_us:.2f} µs "
        f"without ({hot.cost_us:+.2f} µs; one UPDATE of {hot.updates:,} rows, the quickest of 9 rounds)",
    ]


def write(results: EventsResults, rollout: events_rollout.Rollout, load: dict[str, Any], folder: Path) -> None:
    """bench/results/events.json (every round) and events.md (the figures)."""
    measured = {
        "load_average": load,
        "to_sse": dataclasses.asdict(results.to_sse),
        "hot_path": {**dataclasses.asdict(results.hot_path), "cost_us": results.hot_path.cost_us},
        "rollout": rollout.summary(),
    }
    (folder / "events.json").write_text(json.dumps(measured, indent=2, default=str) + "\n")
    before, after = load["before"], load["after"]
    text = [
        "# Events",
        "",
        *(f"- {line}" for line in [*lines(results), *events_rollout.lines(rollout)]),
        "",
        f"Load average (1, 5, 15 min) {before[0]:.2f} {before[1]:.2f} {before[2]:.2f} before, "
        f"{after[0]:.2f} {after[1]:.2f} {after[2]:.2f} after; {os.cpu_count()} cores.",
    ]
    (folder / "events.md").write_text("\n".join(text) + "\n")


def main(quick: bool = False) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--quick", action="store_true", default=quick, help="smaller: 100 changes, 1,000 rows")
    parser.add_argument("--changes", type=int, help="status changes timed to the SSE stream (200, quick 100)")
    parser.add_argument("--updates", type=int, default=5_000, help="no-op UPDATEs per round of the hot path")
    parser.add_argument("--rollout-rows", type=int, help="rows of the mass rollout (5,000, quick 1,000)")
    parser.add_argument("--rollout-rounds", type=int, default=5, help="rollout rounds with events, and as many without")
    args = parser.parse_args()
    changes = args.changes or (100 if args.quick else 200)
    rows = args.rollout_rows or (1_000 if args.quick else 5_000)
    load = {"before": list(os.getloadavg())}
    tag = f"bench-events-{uuid.uuid4().hex[:8]}"
    results_dir = Path(__file__).resolve().parent / "results"
    logs = results_dir / "logs" / "events"
    (logs / "state").mkdir(parents=True, exist_ok=True)
    say = lambda what: print(what, file=sys.stderr, flush=True)  # noqa: E731
    with contextlib.ExitStack() as stack:
        found, dbs = servers.for_run(stack, tag)
        results = run(dbs.clone("events"), logs, changes, args.updates)
        say("; ".join(lines(results)))
        rollout = events_rollout.run(dbs, found.broker_url, tag, logs, rows, args.rollout_rounds, say)
    load["after"] = list(os.getloadavg())
    write(results, rollout, load, results_dir)
    print((results_dir / "events.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
