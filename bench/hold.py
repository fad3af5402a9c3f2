"""A load held: N no-op resources at an interval, kept by the real scheduler and a `-c 2` worker for a span.

The resources' first due times are spread over one interval (as resources made over time would be), the stack
runs one interval to settle, and then it is watched for `held_s`: every `SAMPLE_S` the queue's length in Redis,
how many resources are overdue or have gone longer than an interval (plus jitter) without a reconcile, and the
size of the run history, which the scheduler's retention keeps bounded. At the end each resource's count of
reconciles in the span (from its claim counter) is set against the span divided by the interval.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import psycopg
import redis

from bench import processes, resources, scale, servers
from bench.usage import Sampler, Usage, database_sessions
from models.database import libpq_url

SAMPLE_S = 2.0
HISTORY_KEPT = 5
"""SETPOINT_HISTORY_NOOPS_KEPT for the hold: small, so that retention has pruned well before the span ends."""
HOUSEKEEPING_S = 30
JITTER = 0.1
"""Setpoint's default jitter ratio: a resource's next due time is its interval ± 10%."""
SLACK_S = 5.0
"""How much longer than an interval plus jitter a resource may wait before it counts as starved."""

_SAMPLE = """SELECT count(*) FILTER (WHERE next_reconcile_at < now() - make_interval(secs => %(slack_s)s)),
       count(*) FILTER (WHERE last_reconcile_at IS NULL
                        OR last_reconcile_at < now() - make_interval(secs => %(starved_s)s)),
       (SELECT count(*) FROM runs WHERE kind = %(kind)s)
FROM statuses WHERE kind = %(kind)s"""
_CLAIMS = "SELECT name, claim FROM statuses WHERE kind = %s"


@dataclasses.dataclass(frozen=True)
class Sample:
    at_s: float
    """Seconds into the span."""
    queue: int
    """Messages waiting in the queue."""
    overdue: int
    """Resources due more than SLACK_S seconds ago and not yet reconciled."""
    starved: int
    """Resources that went longer than an interval plus jitter plus SLACK_S without a reconcile."""
    history: int
    """Rows in the run history."""


@dataclasses.dataclass(frozen=True)
class Hold:
    resources: int
    interval_s: float
    held_s: float
    rounds_min: int
    """Reconciles of one resource in the span, counted as messages sent for it (its claim counter: a new claim
    needs the last one's reconcile to have finished)."""
    rounds_mean: float
    rounds_max: int
    off_pace: int
    """Resources whose count is outside `pace`: reconciled too seldom or too often for their interval ± jitter."""
    reconciles_per_s: float
    history_kept: int
    usage: dict[str, Usage]
    """Worker (main and pool processes), scheduler, and the PostgreSQL sessions serving them."""
    samples: list[Sample]

    @property
    def expected_rounds(self) -> float:
        """Reconciles each resource gets in the span on average: the span over the interval."""
        return self.held_s / self.interval_s

    @property
    def queue_max(self) -> int:
        return max(sample.queue for sample in self.samples)

    @property
    def queue_halves(self) -> tuple[float, float]:
        """The queue's mean length over the first half of the span and over the second: growth shows."""
        half = len(self.samples) // 2
        first, second = self.samples[:half] or self.samples, self.samples[half:]
        return (sum(s.queue for s in first) / len(first), sum(s.queue for s in second) / len(second))

    @property
    def overdue_max(self) -> int:
        return max(sample.overdue for sample in self.samples)

    @property
    def starved_max(self) -> int:
        return max(sample.starved for sample in self.samples)

    @property
    def history_max(self) -> int:
        return max(sample.history for sample in self.samples)

    @property
    def pace(self) -> tuple[int, int]:
        """The fewest and the most reconciles a resource may get in the span: every gap between two of them is
        the interval ± jitter, and at most SLACK_S later."""
        fewest = math.floor(self.held_s / (self.interval_s * (1 + JITTER) + SLACK_S))
        return fewest, math.floor(self.held_s / (self.interval_s * (1 - JITTER))) + 1

    @property
    def starved_after_s(self) -> float:
        """A resource this long without a reconcile is starved: its interval, plus jitter, plus SLACK_S."""
        return starved_after_s(self.interval_s)

    @property
    def expected_per_s(self) -> float:
        """Resources over interval: the pace is a little slower, since each period starts when a reconcile ends."""
        return self.resources / self.interval_s

    @property
    def history_bound(self) -> int:
        """Each resource's last HISTORY_KEPT runs, plus what one housekeeping period can add before a prune."""
        return int(self.resources * (self.history_kept + HOUSEKEEPING_S / self.interval_s * (1 + JITTER) + 1))


def starved_after_s(interval_s: float) -> float:
    return interval_s * (1 + JITTER) + SLACK_S


def run(dbs: servers.Databases, broker_url: str, tag: str, count: int, interval_s: float, held_s: float,
        logs: Path) -> Hold:  # fmt: skip
    url = dbs.clone("hold")
    queue = f"{tag}-hold"
    extra = {"SETPOINT_HISTORY_NOOPS_KEPT": str(HISTORY_KEPT), "SETPOINT_HOUSEKEEPING_SECONDS": str(HOUSEKEEPING_S)}
    env = processes.environment(url, broker_url, queue, logs / "state", **extra)
    broker = redis.Redis.from_url(broker_url)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(resources.INSERT, {"interval_s": round(interval_s), "count": count})  # type: ignore[arg-type]
        conn.execute("VACUUM ANALYZE statuses")
        start_at = time.time() + 5
        conn.execute(scale.SPREAD, {"start_at": start_at, "step": interval_s / count, "kind": resources.KIND})
        children: list[processes.Child] = []
        try:
            children.append(processes.worker(env, logs, "hold-worker"))
            children.append(processes.scheduler(env, logs, "hold-scheduler"))
            children[0].wait_for(processes.WORKER_READY)
            children[1].wait_for(processes.SCHEDULER_LEADING)
            time.sleep(max(0.0, start_at + interval_s - time.time()))  # one interval to settle
            return _watch(conn, broker, queue, count, interval_s, held_s, children)
        finally:
            processes.stop_all(children)
            servers.delete_queues(broker_url, queue)
            dbs.drop(url)


def _watch(conn: psycopg.Connection, broker: redis.Redis, queue_name: str, count: int, interval_s: float,
           held_s: float, children: list[processes.Child]) -> Hold:  # fmt: skip
    worker, scheduler = children
    sessions = database_sessions(conn, [conn.info.backend_pid])
    samplers = {
        "worker": Sampler(processes.family(worker.pid)),
        "scheduler": Sampler([scheduler.pid]),
        "PostgreSQL": Sampler(sessions),
    }
    params = {"kind": resources.KIND, "slack_s": SLACK_S, "starved_s": starved_after_s(interval_s)}
    before: dict[str, int] = dict(conn.execute(_CLAIMS, (resources.KIND,)).fetchall())  # type: ignore[arg-type]
    for sampler in samplers.values():
        sampler.start()
    started = time.monotonic()
    samples: list[Sample] = []
    while time.monotonic() - started < held_s:
        time.sleep(SAMPLE_S)  # the sampling period
        for child in children:
            if child.popen.poll() is not None:
                raise RuntimeError(f"{child.label} exited during the hold:\n{child.output()[-3000:]}")
        queue = int(broker.llen(queue_name))  # type: ignore[arg-type]
        row = conn.execute(_SAMPLE, params).fetchone()
        assert row is not None
        samples.append(Sample(time.monotonic() - started, queue, row[0], row[1], row[2]))
    elapsed = time.monotonic() - started
    usage = {label: sampler.stop() for label, sampler in samplers.items()}
    after: dict[str, int] = dict(conn.execute(_CLAIMS, (resources.KIND,)).fetchall())  # type: ignore[arg-type]
    rounds = [after[name] - before.get(name, 0) for name in after]
    held = Hold(
        resources=count,
        interval_s=interval_s,
        held_s=elapsed,
        rounds_min=min(rounds),
        rounds_mean=sum(rounds) / len(rounds),
        rounds_max=max(rounds),
        off_pace=0,
        reconciles_per_s=sum(rounds) / elapsed,
        history_kept=HISTORY_KEPT,
        usage=usage,
        samples=samples,
    )
    fewest, most = held.pace
    return dataclasses.replace(held, off_pace=sum(1 for n in rounds if not fewest <= n <= most))
