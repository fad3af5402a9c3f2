"""The web console's page times at fleet scale: the fleet page (first, last and filtered pages, the live fragment)
and one resource's page, with 10,000 resources; the target is under 300 ms each.

On a scratch database of its own: `resources` files (a tenth Failed, a tenth Pending, labels on every other), an
hour of events (a few thousand transitions for the not-ready chart), and one resource with 50 runs and 30 changes.
The chart of resources not ready (drawn at most every 10 s and shared by every page load) is timed alone too.
Pages are fetched through the real FastAPI app in process (Starlette's client, signed in with a token), so the
time is the server's: the queries, the templates and the ASGI stack, without a network. `python -m bench.console`
runs this part alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
import uuid
from collections.abc import Callable

import psycopg
from fastapi.testclient import TestClient

from bench import servers
from bench.stats import Latency
from models.database import libpq_url
from setpoint.settings import Settings

TOKEN = "bench-console-" + "t" * 24
TARGET_MS = 300.0
FOCUS = "con-000042"
"""The resource whose page is measured: it has runs, changes and events."""

FILL = """
INSERT INTO files (name, path, content, interval_seconds, labels)
SELECT 'con-' || lpad(i::text, 6, '0'), '/tmp/setpoint-bench-console/' || i, 'x', 604800,
       CASE WHEN i %% 2 = 0 THEN '{"team": "web"}'::jsonb ELSE '{}'::jsonb END
FROM generate_series(0, %(count)s - 1) AS i;
UPDATE statuses SET next_reconcile_at = now() + interval '7 days';
UPDATE statuses SET phase = 'Ready', ready = true, observed_generation = generation, last_reconcile_at = now(),
       conditions = '[{"type": "Ready", "status": "True", "reason": "InSync", "message": "generation 1 in sync"}]'
WHERE kind = 'File' AND right(name, 1) NOT IN ('0', '1');
UPDATE statuses SET phase = 'Failed', ready = false, observed_generation = generation, last_reconcile_at = now(),
       last_error = 'PermissionError: [Errno 13] Permission denied'
WHERE kind = 'File' AND right(name, 1) = '1';
INSERT INTO events (id, at, kind, name, type, message)
SELECT nextval('events_id_seq'), now() - make_interval(secs => i * 1.2), 'File',
       'con-' || lpad((i * 7 %% %(count)s)::text, 6, '0'),
       CASE WHEN i %% 2 = 0 THEN 'Failed' ELSE 'Ready' END, 'bench'
FROM generate_series(1, 3000) AS i;
INSERT INTO runs (kind, name, uid, generation, started_at, finished_at, duration_ms, outcome, actions)
SELECT 'File', CAST(%(focus)s AS text), (SELECT uid FROM files WHERE name = CAST(%(focus)s AS text)), 1,
       now() - make_interval(mins => i),
       now() - make_interval(mins => i), 3, CASE WHEN i %% 5 = 0 THEN 'changed' ELSE 'noop' END, '[]'
FROM generate_series(1, 50) AS i;
"""


@dataclasses.dataclass(frozen=True)
class Page:
    label: str
    path: str
    latency: Latency


@dataclasses.dataclass(frozen=True)
class ConsoleTimes:
    resources: int
    samples: int
    pages: list[Page]

    def headlines(self) -> list[str]:
        return [
            f"console, {page.label} with {self.resources:,} resources: p50 {page.latency.p50_s * 1000:.0f} ms, "
            f"p99 {page.latency.p99_s * 1000:.0f} ms ({self.samples} loads; target < {TARGET_MS:.0f} ms)"
            for page in self.pages
        ]


def _fill(url: str, count: int) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for statement in FILL.split(";\n"):
            if statement.strip():
                conn.execute(statement, {"count": count, "focus": FOCUS})  # type: ignore[arg-type]
        for i in range(30):
            conn.execute("UPDATE files SET content = %s WHERE name = %s", (f"v{i}", FOCUS))
        conn.execute("ANALYZE")


def _time(client: TestClient, path: str, samples: int) -> Latency:
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        answer = client.get(path)
        timings.append(time.perf_counter() - started)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
    return Latency.of(timings)


def measure(url: str, count: int, samples: int, say: Callable[[str], None] = print) -> ConsoleTimes:
    from api.app import create_app

    pages = [
        ("fleet page, first page", "/console/"),
        ("fleet page, last page", f"/console/?page={-(-count // 100)}"),
        ("fleet page, filtered by phase and label", "/console/?phase=Failed&label=team%3Dweb"),
        ("fleet page, filtered by part of a name", "/console/?name=00042"),
        ("fleet live fragment", "/console/fragment/fleet"),
        ("resource page (50 runs, 30 changes)", f"/console/r/File/{FOCUS}"),
    ]
    with TestClient(create_app(Settings(database_url=url, api_token=TOKEN))) as client:
        client.post("/console/login", data={"token": TOKEN}, headers={"Origin": "http://testserver"})
        assert re.search("Fleet", client.get("/console/").text)
        measured = []
        for label, path in pages:
            _time(client, path, 3)  # warm: the templates compiled, the pool's connections open
            measured.append(Page(label, path, _time(client, path, samples)))
            latency = measured[-1].latency
            say(f"{label}: p50 {latency.p50_s * 1000:.0f} ms, p99 {latency.p99_s * 1000:.0f} ms")
    measured.append(Page("not-ready chart alone, uncached (the pages reuse it for 10 s)", "", _chart(url, samples)))
    say(f"chart: p50 {measured[-1].latency.p50_s * 1000:.0f} ms, p99 {measured[-1].latency.p99_s * 1000:.0f} ms")
    return ConsoleTimes(count, samples, measured)


def _chart(url: str, samples: int) -> Latency:
    from datetime import UTC, datetime

    from api import console_data
    from models.database import make_engine

    engine = make_engine(url)
    try:
        timings = []
        for _ in range(samples + 3):
            started = time.perf_counter()
            console_data.not_ready_chart(engine, datetime.now(UTC))
            timings.append(time.perf_counter() - started)
        return Latency.of(timings[3:])
    finally:
        engine.dispose()


def run(
    dbs: servers.Databases, count: int = 10_000, samples: int = 100, say: Callable[[str], None] = print
) -> ConsoleTimes:
    """Measure on a clone of the template; it is dropped afterwards."""
    url = dbs.clone("console")
    try:
        _fill(url, count)
        return measure(url, count, samples, say)
    finally:
        dbs.drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=100, help="loads of each page")
    args = parser.parse_args()
    with servers.running() as found:
        dbs = servers.Databases(found.admin_url, f"bench-{uuid.uuid4().hex[:8]}")
        try:
            dbs.prepare()
            times = run(dbs, args.resources, args.samples)
        finally:
            dbs.drop_all()
    print("\n".join(times.headlines()))


if __name__ == "__main__":
    main()
