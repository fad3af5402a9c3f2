"""Dependencies, measured: how fast a fix travels down a chain, and what a dependency tree costs to converge.

- A chain of CHAIN_LENGTH no-op resources, each depending on the one before, all with a 300 s interval: from the
  UPDATE that fixes the first (it was invalid) to the last one ready at its generation. Every hop is an event
  (the dependency's status becomes ready and wakes its dependents in the same transaction), so the target is
  at most CHAIN_LENGTH times the reaction p99 measured in the same run. Beside it, what a periodic re-check of
  unready dependencies would take (Flux's `dependsOn`: 30 s): computed, not run, as a hop waits for the next
  re-check, on average half the period and at worst all of it.
- TREE_ROOTS × TREE_MIDDLE × TREE_LEAVES resources in a three-level tree (a leaf depends on its middle, a middle
  on its root), inserted in one statement into an empty world: the time until every one is ready, and the CPU
  of the scheduler, the worker and the database per resource, against the same number without dependencies
  converged by the same processes, alternately.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import psycopg

from bench import processes, resources, servers
from bench.stats import Latency, median
from bench.usage import Sampler, database_sessions
from models.database import libpq_url

CHAIN_LENGTH = 10
SLOW_S = 300
"""Every resource's interval: polling cannot be what moves a chain along."""
FLUX_RECHECK_S = 30.0
TREE_ROOTS, TREE_MIDDLE, TREE_LEAVES = 10, 9, 10
"""10 roots, 90 middles, 900 leaves: 1,000 resources."""
POLL_S = 0.002


@dataclasses.dataclass(frozen=True)
class Converge:
    """One convergence of a set of resources from nothing."""

    seconds: float
    reconciles: int
    cpu_ms_per_resource: dict[str, float]
    """CPU milliseconds per resource: scheduler, worker (its process family) and database (its sessions)."""


@dataclasses.dataclass(frozen=True)
class Dependencies:
    chain_length: int
    chain: Latency
    """From fixing the first of the chain to its last ready."""
    tree_resources: int
    tree: list[Converge]
    flat: list[Converge]

    @property
    def flux_expected_s(self) -> float:
        return self.chain_length * FLUX_RECHECK_S / 2

    @property
    def flux_worst_s(self) -> float:
        return self.chain_length * FLUX_RECHECK_S

    def tree_over_flat(self, part: str) -> float:
        """How many times the flat set's CPU per resource the tree's costs (medians of the rounds)."""
        tree = median([c.cpu_ms_per_resource[part] for c in self.tree])
        flat = median([c.cpu_ms_per_resource[part] for c in self.flat])
        return tree / flat if flat else float("nan")


_STATE = f"""SELECT count(*) FILTER (WHERE phase = 'Waiting'), count(*) FILTER (WHERE phase = 'Invalid'),
       count(*) FILTER (WHERE ready AND observed_generation = generation)
FROM statuses WHERE kind = '{resources.KIND}' AND name = ANY(%s)"""


def _insert_chain(conn: psycopg.Connection, prefix: str) -> list[str]:
    names = [f"{prefix}-{i:02d}" for i in range(CHAIN_LENGTH)]
    for i, name in enumerate(names):
        conn.execute(
            f"INSERT INTO {resources.TABLE} (name, payload, interval_seconds, depends_on) VALUES (%s, %s, %s, %s)",
            (name, -1 if i == 0 else 0, SLOW_S, [f"{resources.KIND}/{names[i - 1]}"] if i else []),
        )
    return names


Counts = tuple[int | None, int | None, int | None]
"""Waiting, Invalid and ready resources wanted (None: any)."""


def _wait(conn: psycopg.Connection, names: list[str], want: Counts, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute(_STATE, (names,)).fetchone()
        assert row is not None
        if all(w is None or w == got for w, got in zip(want, row, strict=True)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{names[0]}…: waiting {row[0]}, invalid {row[1]}, ready {row[2]}; wanted {want}")
        time.sleep(POLL_S)


def chain(url: str, rounds: int) -> Latency:
    """`rounds` chains, each fixed once it is waiting: fix → last ready, in seconds."""
    took = []
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for r in range(rounds):
            names = _insert_chain(conn, f"chain-{r:03d}")
            _wait(conn, names, (CHAIN_LENGTH - 1, 1, 0), 60)
            started = time.perf_counter()
            conn.execute(f"UPDATE {resources.TABLE} SET payload = 0 WHERE name = %s", (names[0],))
            _wait(conn, names[-1:], (None, None, 1), 60)
            took.append(time.perf_counter() - started)
            _wait(conn, names, (0, 0, CHAIN_LENGTH), 60)
    return Latency.of(took)


def _tree_rows(prefix: str, linked: bool) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = []
    for a in range(TREE_ROOTS):
        root = f"{prefix}-{a}"
        rows.append((root, []))
        for b in range(TREE_MIDDLE):
            middle = f"{root}-{b}"
            rows.append((middle, [f"{resources.KIND}/{root}"] if linked else []))
            rows.extend((f"{middle}-{c}", [f"{resources.KIND}/{middle}"] if linked else []) for c in range(TREE_LEAVES))
    return rows


def converge(url: str, prefix: str, linked: bool, watched: dict[str, list[int]]) -> Converge:
    """Insert the tree (or, not `linked`, the same names without dependencies) in one statement; measure until
    all are ready."""
    rows = _tree_rows(prefix, linked)
    names = [name for name, _ in rows]
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        ours = [conn.info.backend_pid]
        samplers = {part: Sampler(pids) for part, pids in watched.items()}
        samplers["database"] = Sampler(database_sessions(conn, ours))
        for sampler in samplers.values():
            sampler.start()
        started = time.perf_counter()
        conn.execute(
            f"INSERT INTO {resources.TABLE} (name, interval_seconds, depends_on) "
            "SELECT name, %s, CASE WHEN dep = '' THEN '{}'::text[] ELSE ARRAY[dep] END "
            "FROM unnest(%s::text[], %s::text[]) AS t(name, dep)",
            (SLOW_S, names, [deps[0] if deps else "" for _, deps in rows]),
        )
        _wait(conn, names, (None, None, len(names)), 300)
        took = time.perf_counter() - started
        usage = {part: sampler.stop() for part, sampler in samplers.items()}
        reconciles = conn.execute(
            f"SELECT count(*) FROM runs WHERE kind = '{resources.KIND}' AND name = ANY(%s)", (names,)
        ).fetchone()
    per = {part: u.cpu_seconds * 1000 / len(names) for part, u in usage.items()}
    return Converge(took, int(reconciles[0]) if reconciles else 0, per)


def run(
    dbs: servers.Databases, broker_url: str, tag: str, logs: Path, chain_rounds: int, tree_rounds: int
) -> Dependencies:
    """A database and processes of their own, stopped and dropped however the run ends."""
    url = dbs.clone("dependencies")
    queue = f"{tag}-dependencies"
    env = processes.environment(url, broker_url, queue, logs / "state")
    scheduler = processes.scheduler(env, logs, "dependencies-scheduler")
    worker = processes.worker(env, logs, "dependencies-worker")
    try:
        worker.wait_for(processes.WORKER_READY)
        scheduler.wait_for(processes.SCHEDULER_LEADING)
        chained = chain(url, chain_rounds)
        watched = {"scheduler": [scheduler.pid], "worker": processes.family(worker.pid)}
        tree, flat = [], []
        for r in range(tree_rounds):  # alternately, so that a busy spell of the machine hits both
            flat.append(converge(url, f"flat-{r}", False, watched))
            tree.append(converge(url, f"tree-{r}", True, watched))
    finally:
        processes.stop_all([scheduler, worker])
        servers.delete_queues(broker_url, queue)
        dbs.drop(url)
    count = TREE_ROOTS * (1 + TREE_MIDDLE * (1 + TREE_LEAVES))
    return Dependencies(CHAIN_LENGTH, chained, count, tree, flat)
