"""Policies (issue 16): what limits cost the scheduler, and what they hold back, on real servers and processes.

1. Scheduler CPU at N resources on a 5-minute interval, without policies and then with three (none binding), in the
   same run, as bench/scale.py measures it (a drain stands in for the workers).
2. An UPDATE of every row of a stack (scheduler + a worker of 60 processes, each reconcile waiting 0.5 s on its
   pretend target, so that up to 60 overlap), without a policy and then under
   max_in_flight = 50: the most claims in flight seen (sampled from statuses), the most reconciles overlapping (from
   the run history), the throughput of each and how long the last resource waited.
3. The same UPDATE under max_unready = 100, max_failures = 5 with 1% of the rows made invalid: how many resources
   started the change before the rollout halted, and how many after its last counted failure.

`python -m bench --only policies [--quick]` runs it alone and writes bench/results/policies.md and policies.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench import processes, resources, scale, servers
from models.database import libpq_url
from models.policy import working

KIND, TABLE = resources.KIND, resources.TABLE


@dataclasses.dataclass(frozen=True)
class PolicyPlan:
    mode: str
    scale_resources: int
    scale_measure_s: float
    update_rows: int
    scale_interval_s: float = 300.0
    max_in_flight: int = 50
    max_unready: int = 100
    max_failures: int = 5
    invalid_every: int = 100
    """One row in this many is made invalid by the rollout's change (1%)."""
    concurrency: int = 60
    """The worker's processes in parts 2 and 3: more than max_in_flight, so that the limit is what binds."""
    observe_s: float = 0.5
    """How long each reconcile of parts 2 and 3 waits on its (pretend) target: long enough for reconciles to overlap
    on two cores."""


QUICK = PolicyPlan("quick", scale_resources=10_000, scale_measure_s=15.0, update_rows=1_000)
FULL = PolicyPlan("full", scale_resources=100_000, scale_measure_s=60.0, update_rows=10_000)

THREE = """
INSERT INTO policies (name, kinds, selector, max_in_flight, max_per_minute, max_unready, max_failures) VALUES
    ('bench-in-flight', '{{{kind}}}', NULL, 100000, NULL, NULL, NULL),
    ('bench-rate', NULL, NULL, NULL, {rate}, NULL, NULL),
    ('bench-rollout', NULL, '{{}}', NULL, NULL, 1000, 50)
"""
"""Three policies whose scope is every resource and whose limits never bind: their cost alone is measured."""
SETTLED = """UPDATE statuses SET ready = true, phase = 'Ready', observed_generation = generation,
    claimed_generation = generation"""
"""A fleet at rest: every resource ready at its generation (only those in flight or unready are counted)."""
_IN_FLIGHT = "SELECT count(*) FROM statuses WHERE kind = %s AND enqueued_at IS NOT NULL"
_UNCONVERGED = """SELECT count(*) FROM statuses
    WHERE kind = %s AND (observed_generation IS DISTINCT FROM generation OR NOT ready)"""


def scheduler_cpu(url: str, count: int, setup: scale.Setup, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Part 1 (and bench/million.py): the scheduler and its database sessions at `count` resources of a database
    made by scale.prepare, on setup's interval for setup's span, without policies and then with THREE."""
    rate = max(1, round(count / setup.interval_s * 60 * 10))  # ten times what falls due
    found: dict[str, Any] = {}
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(SETTLED)
        conn.execute("VACUUM ANALYZE statuses")
    for label in ("none", "three"):
        if label == "three":
            with psycopg.connect(libpq_url(url), autocommit=True) as conn:
                conn.execute(THREE.format(kind=KIND, rate=rate))  # type: ignore[arg-type]
                conn.execute("UPDATE statuses SET next_reconcile_at = NULL, enqueued_at = NULL")
                conn.execute(SETTLED)
                conn.execute("VACUUM ANALYZE statuses")
        load = scale.setpoint(url, count, setup)
        found[label] = {
            "scheduler_cpu": load.usage.cpu_share,
            "database_cpu": load.database_cpu_share,
            "peak_rss_mb": load.usage.peak_rss_mb,
            "lateness_p50_s": load.lateness.p50_s,
            "lateness_p99_s": load.lateness.p99_s,
            "lateness_max_s": load.lateness.max_s,
            "expected": load.expected,
            "missed": load.missed,
            "unfinished_at_end": load.unfinished_at_end,
        }
        if say:
            say(f"scheduler at {count:,} resources measured, policies: {label}")
    none, three = found["none"], found["three"]
    found["cpu_ratio"] = three["scheduler_cpu"] / none["scheduler_cpu"] if none["scheduler_cpu"] else None
    if none["database_cpu"] and three["database_cpu"] is not None:
        found["database_cpu_ratio"] = three["database_cpu"] / none["database_cpu"]
    return {"resources": count, "interval_s": setup.interval_s, "measured_s": setup.measure_s, **found}


class _InFlight:
    """Samples how many claims of the kind are in flight, every 20 ms, on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url, self.most = url, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            while not self._stop.wait(0.02):
                row = conn.execute(_IN_FLIGHT, (KIND,)).fetchone()
                self.most = max(self.most, int(row[0]) if row else 0)

    def __enter__(self) -> _InFlight:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait(conn: psycopg.Connection[Any], query: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (row := conn.execute(query, (KIND,)).fetchone()) and row[0]:  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{row[0]} resources still not done after {timeout_s}s")
        time.sleep(0.1)


def most_overlapping(spans: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def _update_round(url: str, rows: int, timeout_s: float) -> dict[str, Any]:
    """One UPDATE of every row, timed from its commit to the last reconcile recorded."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn, _InFlight(url) as sampled:
        start = conn.execute(f"UPDATE {TABLE} SET payload = payload + 1 RETURNING now()").fetchone()  # type: ignore[arg-type]
        assert start is not None
        _wait(conn, _UNCONVERGED, timeout_s)
        spans = conn.execute(
            "SELECT started_at, finished_at FROM runs WHERE kind = %s AND started_at >= %s", (KIND, start[0])
        ).fetchall()
    last_start = max(s for s, _ in spans)
    last_end = max(e for _, e in spans)
    return {
        "rows": rows,
        "runs": len(spans),
        "most_in_flight_sampled": sampled.most,
        "most_runs_overlapping": most_overlapping(spans),
        "per_s": rows / (last_end - start[0]).total_seconds(),
        "slowest_wait_s": (last_start - start[0]).total_seconds(),
    }


def stack_parts(dbs: servers.Databases, broker_url: str, tag: str, logs: Path, plan: PolicyPlan) -> dict[str, Any]:
    """Parts 2 and 3, on a stack of their own."""
    url = dbs.clone("policies_stack")
    rows = plan.update_rows
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(resources.INSERT, {"interval_s": 3600, "count": rows})  # type: ignore[arg-type]
    env = processes.environment(url, broker_url, f"{tag}-policies", logs / "state")
    env_slow = {**env, "BENCH_NOOP_OBSERVE_S": str(plan.observe_s)}
    children = [
        processes.worker(env_slow, logs, "policies-worker", concurrency=plan.concurrency),
        processes.scheduler(env, logs, "policies-scheduler"),
    ]
    timeout_s = 60 + rows / 10
    try:
        children[0].wait_for(processes.WORKER_READY)
        children[1].wait_for(processes.SCHEDULER_LEADING)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            _wait(conn, _UNCONVERGED, timeout_s)
        unlimited = _update_round(url, rows, timeout_s)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            limit = (KIND, plan.max_in_flight)
            conn.execute("INSERT INTO policies (name, kinds, max_in_flight) VALUES ('fifty', ARRAY[%s], %s)", limit)
        limited = _update_round(url, rows, timeout_s)
        rollout = _rollout(url, plan, timeout_s)
    finally:
        processes.stop_all(children)
        servers.delete_queues(broker_url, f"{tag}-policies")
        dbs.drop(url)
    return {
        "update": {
            "unlimited": unlimited,
            "max_in_flight": plan.max_in_flight,
            "limited": limited,
            "throughput_ratio": limited["per_s"] / unlimited["per_s"],
        },
        "rollout": rollout,
    }


_ROLLOUT = f"""UPDATE {TABLE}
SET payload = CASE WHEN {resources.INDEX_SQL} %% %(every)s = 37 THEN -1 ELSE payload + 1 END"""
_ROLLOUT_STATE = f"""SELECT count(*) FILTER (WHERE claimed_generation = generation) AS started,
       count(*) FILTER (WHERE phase = 'Invalid' AND claimed_generation = generation) AS invalid,
       count(*) FILTER (WHERE phase = 'Held') AS held,
       count(*) FILTER (WHERE enqueued_at IS NOT NULL) AS in_flight,
       count(*) FILTER (WHERE {working("statuses")}) AS working
FROM statuses WHERE kind = %s"""


def _rollout(url: str, plan: PolicyPlan, timeout_s: float) -> dict[str, Any]:
    """Part 3: a change with 1% invalid rows under max_unready and max_failures, until the rollout halts. Sampled
    every 50 ms: the most resources working on the change at once (started, not ready at it: the blast radius the
    limit bounds), and how many had started when the last failure the halt counts was recorded."""
    most_working, started_at_failure = 0, None
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("DELETE FROM policies")
        conn.execute(
            "INSERT INTO policies (name, kinds, max_unready, max_failures) VALUES ('wave', ARRAY[%s], %s, %s)",
            (KIND, plan.max_unready, plan.max_failures),
        )
        start = time.monotonic()
        conn.execute(_ROLLOUT, {"every": plan.invalid_every})  # type: ignore[arg-type]
        deadline = start + timeout_s
        while True:  # halted: as many invalid as max_failures, none in flight, and the count no longer moves
            state = conn.execute(_ROLLOUT_STATE, (KIND,)).fetchone()
            assert state is not None
            most_working = max(most_working, state[4])
            if state[1] >= plan.max_failures and started_at_failure is None:
                started_at_failure = state[0]
            if state[1] >= plan.max_failures and state[3] == 0 and state[2] > 0:
                time.sleep(2)  # several ticks: nothing more may start
                again = conn.execute(_ROLLOUT_STATE, (KIND,)).fetchone()
                if again == state:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the rollout did not halt: {state}")
            time.sleep(0.05)
    started, invalid, held, _, working_at_halt = state
    return {
        "rows": plan.update_rows,
        "max_unready": plan.max_unready,
        "max_failures": plan.max_failures,
        "invalid_share": 1 / plan.invalid_every,
        "started_before_halt": started,
        "ready_at_new_generation": started - working_at_halt,
        "working_at_halt": working_at_halt,
        "most_working_sampled": most_working,
        "invalid_seen": invalid,
        "held": held,
        "started_after_last_counted_failure": started - started_at_failure if started_at_failure is not None else None,
        "halted_after_s": time.monotonic() - start - 2,
    }


def run(plan: PolicyPlan, stack: contextlib.ExitStack, say: Any, results: Path) -> dict[str, Any]:
    tag = f"bench-pol-{int(time.time())}"
    logs = results / "logs" / "policies"
    (logs / "state").mkdir(parents=True, exist_ok=True)
    found, dbs = servers.for_run(stack, tag)
    say(f"policies: {plan.mode} run, databases ready")
    measured: dict[str, Any] = {"mode": plan.mode, "concurrency": plan.concurrency, "observe_s": plan.observe_s}
    measured.update(stack_parts(dbs, found.broker_url, tag, logs, plan))
    say("policies: UPDATE under max_in_flight and the halted rollout measured")
    setup = scale.Setup(found.broker_url, tag, plan.scale_interval_s, plan.scale_measure_s, logs)
    url = scale.prepare(dbs, plan.scale_resources, plan.scale_interval_s)
    measured["scheduler"] = scheduler_cpu(url, plan.scale_resources, setup)
    dbs.drop(url)
    say("policies: scheduler CPU without and with three policies measured")
    write(measured, results)
    return measured


def write(measured: dict[str, Any], results: Path) -> None:
    (results / "policies.json").write_text(json.dumps(measured, indent=2, default=str) + "\n")
    s, u, r = measured["scheduler"], measured["update"], measured["rollout"]
    pct = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"  # noqa: E731
    lines = [
        f"# Policies ({measured['mode']} run)",
        "",
        f"Scheduler at {s['resources']:,} resources, {s['interval_s']:g} s interval, {s['measured_s']:g} s measured:",
        "",
        "| policies | scheduler CPU | its database sessions' CPU | lateness p99 | missed |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {pct(s[label]['scheduler_cpu'])} | {pct(s[label]['database_cpu'])} | "
            f"{s[label]['lateness_p99_s']:.3f} s | {s[label]['missed']} of {s[label]['expected']} |"
            for label in ("none", "three")
        ),
        "",
        f"Scheduler CPU with three policies: {s['cpu_ratio']:.2f}x without (target <= 1.25x).",
        "",
        f"UPDATE of {u['unlimited']['rows']:,} rows (one worker of {measured.get('concurrency', 2)} processes, each "
        f"reconcile waiting {measured.get('observe_s', 0):g} s on its target):",
        "",
        "| limit | most claims in flight | most runs overlapping | reconciles/s | slowest wait |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {x['most_in_flight_sampled']} | {x['most_runs_overlapping']} | {x['per_s']:.0f} | "
            f"{x['slowest_wait_s']:.1f} s |"
            for label, x in (("none", u["unlimited"]), (f"max_in_flight {u['max_in_flight']}", u["limited"]))
        ),
        "",
        f"Throughput under max_in_flight {u['max_in_flight']}: {pct(u['throughput_ratio'])} of unlimited.",
        "",
        f"Rollout of {r['rows']:,} rows, {pct(r['invalid_share'])} invalid, max_unready {r['max_unready']}, "
        f"max_failures {r['max_failures']}: at most {r['most_working_sampled']} resources were working on the "
        f"change at once (sampled every 50 ms; bound {r['max_unready']}), {r['working_at_halt']} when it halted "
        f"(changed, not ready at the new generation: bound {r['max_unready'] + r['max_failures']}). "
        f"{r['started_before_halt']} started the change before the halt ({r['ready_at_new_generation']} of them "
        f"ready at it, {r['invalid_seen']} invalid), {r['started_after_last_counted_failure']} after the failure "
        f"that halted it was recorded; {r['held']} held.",
    ]
    (results / "policies.md").write_text("\n".join(lines) + "\n")
