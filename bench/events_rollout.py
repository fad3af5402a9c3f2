"""What events cost a mass rollout: one UPDATE of every row of a real stack, reconciled to the last one, with the
events trigger enabled and disabled, alternately, in the same run.

A new generation observed is news, so every reconcile of a rollout makes a `Ready` event: the row trigger
`setpoint_status_event` on statuses writes it into `event_inbox`, whose statement trigger `setpoint_events_waiting`
then locks the row before it (or sends the NOTIFY). "Off" is `ALTER TABLE statuses DISABLE TRIGGER
setpoint_status_event`: with nothing written to the inbox, its statement trigger does not fire either, so that one
switch takes the whole write path of events away (setpoint_status_deleted fires on DELETE only, not in a rollout).
Publishing (the inbox moved into `events`) is done by readers and housekeeping, not by the reconciles: it is timed
apart, between rounds, so that every round starts from an empty inbox; housekeeping is held off during the run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import processes, resources, servers
from bench.usage import Sampler, database_sessions
from models.database import libpq_url

KIND, TABLE = resources.KIND, resources.TABLE
TRIGGER = "setpoint_status_event"
_UNCONVERGED = """SELECT count(*) FROM statuses
    WHERE kind = %s AND (observed_generation IS DISTINCT FROM generation OR NOT ready)"""
_EVENTS_SINCE = """SELECT type, count(*) FROM (
    SELECT type FROM event_inbox WHERE kind = %(kind)s AND at >= %(start)s
    UNION ALL SELECT type FROM events WHERE kind = %(kind)s AND at >= %(start)s) AS made GROUP BY type"""
_RUNS_SINCE = "SELECT count(*), max(finished_at) FROM runs WHERE kind = %s AND started_at >= %s"
_FUNCTIONS = """SELECT funcname, calls, total_time FROM pg_stat_user_functions
    WHERE funcname IN ('setpoint_status_event', 'setpoint_events_waiting')"""
"""Time spent inside the events triggers (track_functions = 'pl' on the stack's database): the row trigger's total
includes the inbox's statement trigger, fired by its INSERT."""


@dataclasses.dataclass(frozen=True)
class Round:
    """One UPDATE of every row, timed from its commit to the last reconcile's end (runs.finished_at)."""

    events_on: bool
    rows: int
    seconds: float
    events: dict[str, int]
    """Events the round made, by type (inbox and published)."""
    cpu_ms_per_reconcile: dict[str, float]
    """CPU milliseconds per reconcile of each watched group: the worker (with its pool), the scheduler, and the
    PostgreSQL sessions of the stack (the server's background processes are not in it)."""
    publish_s: float | None
    """How long one setpoint_publish_events() took after the round, to move its events into `events`."""
    in_triggers: dict[str, dict[str, float]]
    """Per trigger function: calls in the round, and milliseconds spent inside it (pg_stat_user_functions)."""

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds


@dataclasses.dataclass(frozen=True)
class Rollout:
    rows: int
    rounds: list[Round]

    def of(self, events_on: bool) -> list[Round]:
        return [r for r in self.rounds if r.events_on is events_on]

    def median_per_s(self, events_on: bool) -> float:
        return statistics.median(r.per_s for r in self.of(events_on))

    def median_cpu_ms(self, events_on: bool, group: str) -> float | None:
        found = [r.cpu_ms_per_reconcile[group] for r in self.of(events_on) if group in r.cpu_ms_per_reconcile]
        return statistics.median(found) if found else None

    @property
    def ratio(self) -> float:
        """Throughput with events over without: 0.9 is 10% slower with them."""
        return self.median_per_s(True) / self.median_per_s(False)

    @property
    def paired_ratios(self) -> list[float]:
        """Each round with events over the round without that followed it: less moved by a busy spell of the
        machine than the medians are."""
        return [on.per_s / off.per_s for on, off in zip(self.of(True), self.of(False), strict=True)]

    def summary(self) -> dict[str, Any]:
        groups = sorted({g for r in self.rounds for g in r.cpu_ms_per_reconcile})
        return {
            "rows": self.rows,
            "rounds_each": len(self.of(True)),
            "per_s_on": self.median_per_s(True),
            "per_s_off": self.median_per_s(False),
            "ratio_on_over_off": self.ratio,
            "events_per_round_on": [sum(r.events.values()) for r in self.of(True)],
            "events_per_round_off": [sum(r.events.values()) for r in self.of(False)],
            "cpu_ms_per_reconcile_on": {g: self.median_cpu_ms(True, g) for g in groups},
            "cpu_ms_per_reconcile_off": {g: self.median_cpu_ms(False, g) for g in groups},
            "paired_ratios": self.paired_ratios,
            "trigger_ms_per_reconcile_on": statistics.median(
                r.in_triggers.get(TRIGGER, {}).get("ms", 0.0) / r.rows for r in self.of(True)
            ),
            "rounds": [{**dataclasses.asdict(r), "per_s": r.per_s} for r in self.rounds],
        }


def _wait_converged(conn: psycopg.Connection, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (row := conn.execute(_UNCONVERGED, (KIND,)).fetchone()) and row[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{row[0]} resources still not ready at their generation after {timeout_s}s")
        time.sleep(0.1)


def _settle(conn: psycopg.Connection) -> float:
    """Publish what the last round left in the inbox (timed), then vacuum what it churned, so that every round
    starts from the same state."""
    started = time.perf_counter()
    conn.execute("SELECT setpoint_publish_events()")
    publish_s = time.perf_counter() - started
    conn.execute("VACUUM ANALYZE statuses, event_inbox, events, runs")
    return publish_s


def _functions(conn: psycopg.Connection) -> dict[str, tuple[int, float]]:
    return {name: (int(calls), float(ms)) for name, calls, ms in conn.execute(_FUNCTIONS)}


def _reported(
    conn: psycopg.Connection, before: dict[str, tuple[int, float]], events: int, timeout_s: float = 20.0
) -> dict[str, tuple[int, float]]:
    """The function stats once the row trigger's calls cover the round's events: an idle session reports its own
    within about ten seconds (PostgreSQL 15), so the next round's figures would otherwise take in this one's."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = _functions(conn)
        if now.get(TRIGGER, (0, 0.0))[0] - before.get(TRIGGER, (0, 0.0))[0] >= events or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def _round(url: str, rows: int, events_on: bool, watched: dict[str, list[int]], timeout_s: float) -> Round:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        functions = _functions(conn)
        if not events_on:
            conn.execute(f"ALTER TABLE statuses DISABLE TRIGGER {TRIGGER}")  # type: ignore[arg-type]
        try:
            ours = [conn.info.backend_pid]
            groups = {**watched, "PostgreSQL": database_sessions(conn, ours)}
            samplers = {label: Sampler(pids) for label, pids in groups.items() if pids}
            for sampler in samplers.values():
                sampler.start()
            conn.execute(f"UPDATE {TABLE} SET payload = payload + 1")  # type: ignore[arg-type]
            committed = conn.execute("SELECT now()").fetchone()
            assert committed is not None
            _wait_converged(conn, timeout_s)
            cpu = {label: s.stop().cpu_seconds * 1000 / rows for label, s in samplers.items()}
        finally:
            if not events_on:
                conn.execute(f"ALTER TABLE statuses ENABLE TRIGGER {TRIGGER}")  # type: ignore[arg-type]
        runs = conn.execute(_RUNS_SINCE, (KIND, committed[0])).fetchone()
        assert runs is not None and runs[0] >= rows, f"only {runs} runs for {rows} rows"
        made: dict[str, int] = dict(conn.execute(_EVENTS_SINCE, {"kind": KIND, "start": committed[0]}).fetchall())  # type: ignore[arg-type]
        after = _reported(conn, functions, sum(made.values()))
        publish_s = _settle(conn)
    in_triggers = {
        name: {"calls": calls - functions.get(name, (0, 0.0))[0], "ms": ms - functions.get(name, (0, 0.0))[1]}
        for name, (calls, ms) in after.items()
    }
    seconds = (runs[1] - committed[0]).total_seconds()
    return Round(events_on, rows, seconds, made, cpu, publish_s if events_on else None, in_triggers)


def run(dbs: servers.Databases, broker_url: str, tag: str, logs: Path, rows: int, rounds: int, say: Any) -> Rollout:
    """A stack of its own (scheduler, a worker of two processes) on `rows` no-op resources; an uncounted round to
    warm it, then `rounds` with events and as many without, alternately (on, off, on, off, ...)."""
    url = dbs.clone("events_rollout")
    queue = f"{tag}-events"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(resources.INSERT, {"interval_s": 3600, "count": rows})  # type: ignore[arg-type]
        conn.execute(f"ALTER DATABASE \"{conn.info.dbname}\" SET track_functions = 'pl'")  # type: ignore[arg-type]
    # housekeeping (run-history pruning, publishing the inbox) once an hour: not in the middle of a timed round
    env = processes.environment(url, broker_url, queue, logs / "state", SETPOINT_HOUSEKEEPING_SECONDS="3600")
    children = [processes.worker(env, logs, "events-worker"), processes.scheduler(env, logs, "events-scheduler")]
    timeout_s = 120 + rows / 10
    measured: list[Round] = []
    try:
        worker, scheduler = children
        worker.wait_for(processes.WORKER_READY)
        scheduler.wait_for(processes.SCHEDULER_LEADING)
        watched = {"worker": processes.family(worker.pid), "scheduler": [scheduler.pid]}
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            _wait_converged(conn, timeout_s)
            _settle(conn)
        warm = _round(url, rows, True, watched, timeout_s)
        say(f"events rollout: warm-up round {warm.per_s:.0f} reconciles/s")
        for i in range(rounds):
            for events_on in (True, False):
                measured.append(_round(url, rows, events_on, watched, timeout_s))
                last = measured[-1]
                label = "on" if events_on else "off"
                say(f"events rollout: round {i + 1} events {label}: {last.per_s:.0f} reconciles/s, {last.events}")
    finally:
        processes.stop_all(children)
        servers.delete_queues(broker_url, queue)
        dbs.drop(url)
    return Rollout(rows, measured)


def lines(rollout: Rollout) -> list[str]:
    s = rollout.summary()
    pg_on, pg_off = s["cpu_ms_per_reconcile_on"].get("PostgreSQL"), s["cpu_ms_per_reconcile_off"].get("PostgreSQL")
    cpu = f"; PostgreSQL CPU per reconcile {pg_on:.2f} ms on, {pg_off:.2f} ms off" if pg_on and pg_off else ""
    paired = ", ".join(f"{x:.2f}" for x in s["paired_ratios"])
    return [
        f"mass rollout, one UPDATE of {s['rows']:,} rows to the last reconcile (worker of 2 processes, median of "
        f"{s['rounds_each']} rounds each, alternately): {s['per_s_on']:.0f} reconciles/s with events, "
        f"{s['per_s_off']:.0f} without ({s['ratio_on_over_off']:.2f}x; round by round {paired}); events per round "
        f"{s['events_per_round_on']} on, {s['events_per_round_off']} off{cpu}; "
        f"{s['trigger_ms_per_reconcile_on']:.3f} ms per reconcile inside the events triggers",
    ]
