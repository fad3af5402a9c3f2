"""Scheduler scale: CPU, memory and lateness (due time → message in Redis) of one scheduler holding N resources.

The resources' first due times are spread evenly over one interval, and the first `measure_s` seconds of it are
measured, with no worker running (bench/drain.py takes the messages and stands in for the workers). Setpoint's
scheduler (`python -m scheduler`, its production settings) and the naive peer (bench/apsched_peer.py) are
measured the same way; for Setpoint, the CPU of the PostgreSQL sessions serving it is measured too.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from bench import processes, resources, servers
from bench.drain import Drain
from bench.stats import Latency
from bench.usage import Sampler, Usage, database_sessions
from models.database import libpq_url

GRACE_S = 2.0
"""A resource due later than this before the end of the measured span is not expected yet; one due earlier
whose message has not come by the end is counted as missed."""

BUILD_S_PER_JOB = (100e-6, 400e-6, 1600e-6)
"""Time allowed APScheduler to build each job before the first is due (about 60 µs each, measured on a quiet
machine), in turn: a job whose first run had passed before the scheduler started would be measured late."""

SPREAD = f"""UPDATE statuses
SET next_reconcile_at = to_timestamp(%(start_at)s) + make_interval(secs => ({resources.INDEX_SQL} - 1) * %(step)s)
WHERE kind = %(kind)s"""
SESSIONS_EVERY_S = 0.1
"""How often the database sessions serving the scheduler are listed and sampled: one that lives shorter may be
missed. Listed once at the start, the pool's overflow sessions (with the metrics' and claims' queries) were: a
million-resource run measured 1.1% of a core that way, 6% listing them at each sample."""
INSERT_CHUNK = 100_000
"""Resources inserted per statement by `prepare` (about 15 s of trigger work each on the 2-core test machine)."""
_DONE = """UPDATE statuses SET enqueued_at = NULL, next_reconcile_at = next_reconcile_at + make_interval(secs => %s)
WHERE kind = %s AND name = ANY(%s)"""
_UNFINISHED = "SELECT count(*) FROM statuses WHERE kind = %s AND enqueued_at IS NOT NULL"


@dataclasses.dataclass(frozen=True)
class SchedulerLoad:
    peer: str
    resources: int
    interval_s: float
    measured_s: float
    usage: Usage
    database_cpu_share: float | None
    """CPU of the PostgreSQL sessions serving the scheduler, per wall second (None: not measurable here)."""
    lateness: Latency
    expected: int
    """Resources due within the measured span (less GRACE_S)."""
    missed: int
    """Of those, how many had no message by the end of the span."""
    unfinished_at_end: int | None = None
    """Claims not yet completed by the drain at the end of the span (queued or being completed): a drain that keeps
    up leaves about what falls due in its DONE_EVERY_S."""


class _Completion:
    """What a worker's finish does to the claim: frees it and makes the resource due one interval later."""

    def __init__(self, database_url: str, interval_s: float) -> None:
        self.conn = psycopg.connect(libpq_url(database_url), autocommit=True)
        self.interval_s = interval_s

    def __call__(self, names: list[str]) -> None:
        self.conn.execute(_DONE, (self.interval_s, resources.KIND, names))


def prepare(dbs: servers.Databases, count: int, interval_s: float, say: Callable[[str], None] | None = None) -> str:
    """A database holding `count` resources, none due until `setpoint` spreads their due times.

    The rows go in through the triggers, as a user's would, INSERT_CHUNK at a time (a million take minutes):
    `say` hears how far it has got."""
    url = dbs.clone(f"scale_{count}")
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for first in range(1, count + 1, INSERT_CHUNK):
            last = min(count, first + INSERT_CHUNK - 1)
            conn.execute(resources.INSERT_RANGE, {"interval_s": round(interval_s), "first": first, "last": last})  # type: ignore[arg-type]
            if say and count > INSERT_CHUNK:
                say(f"scale: {last:,} of {count:,} resources inserted")
        conn.execute("UPDATE statuses SET next_reconcile_at = NULL")
        conn.execute("VACUUM ANALYZE statuses")  # as autovacuum would have, long before
    return url


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every scale scenario of a run shares."""

    broker_url: str
    tag: str
    """This run's tag, in the name of every queue."""
    interval_s: float
    measure_s: float
    logs: Path


def setpoint(url: str, count: int, setup: Setup) -> SchedulerLoad:
    """Measure `python -m scheduler` on a database made by `prepare`."""
    broker_url, tag, interval_s, measure_s, logs = (
        setup.broker_url, setup.tag, setup.interval_s, setup.measure_s, setup.logs
    )  # fmt: skip
    queue = f"{tag}-scale-setpoint-{count}"
    env = processes.environment(url, broker_url, queue, logs / "state")
    child = processes.scheduler(env, logs, f"scale-setpoint-{count}")
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            child.wait_for(processes.SCHEDULER_LEADING)
            start_at = time.time() + 1 + count / 20_000
            conn.execute(SPREAD, {"start_at": start_at, "step": interval_s / count, "kind": resources.KIND})
            completion = _Completion(url, interval_s)
            try:
                with Drain(broker_url, queue, completion) as drain:
                    _sleep_until(start_at)
                    ours = [conn.info.backend_pid, completion.conn.info.backend_pid]
                    usage, database = _watch([child.pid], lambda: database_sessions(conn, ours), measure_s)
                    unfinished = conn.execute(_UNFINISHED, (resources.KIND,)).fetchone()
            finally:
                completion.conn.close()
    finally:
        child.stop()
        servers.delete_queues(broker_url, queue)
    load = _summary("Setpoint", count, interval_s, measure_s, usage, database, drain, start_at)
    return dataclasses.replace(load, unfinished_at_end=unfinished[0] if unfinished else None)


def apscheduler(count: int, setup: Setup) -> SchedulerLoad:
    """Measure the naive peer, bench/apsched_peer.py, holding `count` jobs."""
    broker_url, tag, interval_s, measure_s, logs = (
        setup.broker_url, setup.tag, setup.interval_s, setup.measure_s, setup.logs
    )  # fmt: skip
    queue = f"{tag}-scale-aps-{count}"
    env = processes.environment("postgresql://unused", broker_url, queue, logs / "state")
    for build_s_per_job in BUILD_S_PER_JOB:  # a busy machine builds slower: try again with more time to build
        start_at = time.time() + 2 + count * build_s_per_job
        argv = [sys.executable, "-m", "bench.apsched_peer", str(count), str(interval_s), repr(start_at), queue,
                broker_url]  # fmt: skip
        child = processes.Child(f"scale-apscheduler-{count}", argv, env, logs)
        try:
            child.wait_for("ready", timeout_s=start_at - time.time() + 120)
            found = re.search(r"late_jobs=(\d+)", child.output())
            if found is None or int(found.group(1)):
                if build_s_per_job == BUILD_S_PER_JOB[-1]:
                    raise RuntimeError(
                        f"APScheduler took longer to build its jobs than allowed: {child.output()[-500:]}"
                    )
                continue
            with Drain(broker_url, queue) as drain:
                _sleep_until(start_at)
                usage, _ = _watch([child.pid], None, measure_s)
            break
        finally:
            child.stop()
            servers.delete_queues(broker_url, queue)
    return _summary("APScheduler", count, interval_s, measure_s, usage, None, drain, start_at)


def _watch(pids: list[int], sessions: Callable[[], list[int]] | None, measure_s: float) -> tuple[Usage, float | None]:
    """The processes' usage over `measure_s`, and the CPU share of the database sessions `sessions` names each
    tenth of a second (the scheduler's pool opens and closes some during the span)."""
    process = Sampler(pids)
    database = Sampler([], every_s=SESSIONS_EVERY_S, discover=sessions) if sessions else None
    process.start()
    if database:
        database.start()
    time.sleep(measure_s)
    return process.stop(), database.stop().cpu_share if database else None


def _summary(
    peer: str, count: int, interval_s: float, measure_s: float, usage: Usage, database: float | None, drain: Drain,
    start_at: float,
) -> SchedulerLoad:  # fmt: skip
    step, end = interval_s / count, start_at + measure_s - GRACE_S
    lateness, expected = [], 0
    for i in range(1, count + 1):
        due = start_at + (i - 1) * step
        if due > end:
            break
        expected += 1
        if (arrived := drain.arrivals.get(resources.name(i))) is not None:
            lateness.append(arrived - due)
    missed = expected - len(lateness)
    return SchedulerLoad(peer, count, interval_s, measure_s, usage, database, Latency.of(lateness), expected, missed)


def _sleep_until(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()))
