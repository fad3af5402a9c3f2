"""The cost of desired-state history: UPDATE throughput of desired rows with the `changes` trigger and without it.

On a scratch database of its own (no scheduler, no worker: only the database's work is measured), `rows` files:
single-row UPDATEs from CLIENTS connections (each a transaction, as an admin's or the API's), and one UPDATE
statement of every row. Each change bumps the generation, so every row trigger of a kind fires (stamp, status,
links, ownership, history). Rounds alternate with the history triggers attached and dropped (a pair back to back,
so that a busy spell of the machine hits both alike); the ratio reported is the median of the pairs' ratios.
`python -m bench.changes` runs this part alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable

import psycopg

from bench import servers
from bench.stats import median
from models import change
from models.database import libpq_url

CLIENTS = 4


@dataclasses.dataclass(frozen=True)
class Round:
    history: bool
    single_per_s: float
    """Single-row UPDATE transactions per second, CLIENTS connections together."""
    bulk_s: float
    """Seconds for one UPDATE statement of every row."""


@dataclasses.dataclass(frozen=True)
class TriggerCost:
    rows: int
    updates: int
    rounds: list[Round]

    def _median(self, history: bool, field: str) -> float:
        return median([getattr(r, field) for r in self.rounds if r.history == history])

    def _paired(self, field: str) -> float:
        """The median over the rounds' pairs (with, then without, back to back) of with / without: the machine's
        busy spells, which a shared machine has, move both of a pair alike."""
        pairs = zip(self.rounds[0::2], self.rounds[1::2], strict=True)
        return median([getattr(on, field) / getattr(off, field) for on, off in pairs])

    @property
    def single_ratio(self) -> float:
        """Throughput with history over throughput without (1.0: free)."""
        return self._paired("single_per_s")

    @property
    def bulk_ratio(self) -> float:
        """How many times longer the bulk UPDATE takes with history."""
        return self._paired("bulk_s")

    def _range(self, history: bool, field: str, spec: str) -> str:
        values = [getattr(r, field) for r in self.rounds if r.history == history]
        return f"{min(values):{spec}}-{max(values):{spec}}"

    def headlines(self) -> list[str]:
        """Medians of the rounds, each with its range."""
        return [
            f"changes trigger, single-row UPDATEs ({CLIENTS} clients, {self.updates:,} per round): "
            f"{self._median(True, 'single_per_s'):,.0f}/s with history ({self._range(True, 'single_per_s', ',.0f')}), "
            f"{self._median(False, 'single_per_s'):,.0f}/s without ({self._range(False, 'single_per_s', ',.0f')}): "
            f"{self.single_ratio:.0%} of the throughput (median of {len(self.rounds) // 2} pairs)",
            f"changes trigger, one UPDATE of {self.rows:,} rows: {self._median(True, 'bulk_s'):.2f} s with history "
            f"({self._range(True, 'bulk_s', '.2f')}), {self._median(False, 'bulk_s'):.2f} s without "
            f"({self._range(False, 'bulk_s', '.2f')}): {self.bulk_ratio:.2f}x the time (median of pairs)",
        ]


def _fill(url: str, rows: int) -> list[str]:
    names = [f"hist-{i:06d}" for i in range(rows)]
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO files (name, path, content, interval_seconds) "
            "SELECT n, '/tmp/setpoint-bench-' || n, 'x', 604800 FROM unnest(%s::text[]) AS n",
            (names,),
        )
    return names


def _single(url: str, names: list[str], updates: int, tag: str) -> float:
    """Single-row UPDATEs spread over CLIENTS connections, each its own transaction; per second."""
    share = updates // CLIENTS
    ready = threading.Barrier(CLIENTS + 1)
    failures: list[BaseException] = []

    def client(index: int) -> None:
        try:
            with psycopg.connect(libpq_url(url), autocommit=True) as conn:
                ready.wait()
                for i in range(share):
                    name = names[(index * share + i) % len(names)]
                    conn.execute("UPDATE files SET content = %s WHERE name = %s", (f"{tag}-{i}", name))
        except BaseException as error:  # noqa: BLE001 - reported below, in the measuring thread
            failures.append(error)
            ready.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    return share * CLIENTS / elapsed


def _bulk(url: str, tag: str) -> float:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("UPDATE files SET content = %s", (tag,))
        return time.perf_counter() - started


def _history(url: str, on: bool) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(change.detach("files"))  # type: ignore[arg-type]
        if on:
            conn.execute(change.attach("files", "File"))  # type: ignore[arg-type]
        conn.execute("TRUNCATE changes")


def run(
    dbs: servers.Databases,
    rows: int = 10_000,
    updates: int = 2_000,
    rounds: int = 8,
    say: Callable[[str], None] = print,
) -> TriggerCost:
    """Measure on a clone of the template; it is dropped afterwards."""
    url = dbs.clone("changes")
    try:
        names = _fill(url, rows)
        _bulk(url, "warm-up")
        measured = []
        for i in range(rounds * 2):
            history = i % 2 == 0
            _history(url, history)
            tag = uuid.uuid4().hex[:8]
            single = _single(url, names[: min(rows, 5_000)], updates, tag)
            bulk = _bulk(url, tag)
            measured.append(Round(history, single, bulk))
            say(f"changes trigger {'on ' if history else 'off'}: {single:,.0f} updates/s, bulk {bulk:.2f} s")
        return TriggerCost(rows, updates, measured)
    finally:
        dbs.drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.changes", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=2_000, help="single-row UPDATEs per round")
    parser.add_argument("--rounds", type=int, default=8, help="pairs of rounds, with history and without")
    args = parser.parse_args()
    with servers.running() as found:
        dbs = servers.Databases(found.admin_url, f"bench-{uuid.uuid4().hex[:8]}")
        try:
            dbs.prepare()
            cost = run(dbs, args.rows, args.updates, args.rounds)
        finally:
            dbs.drop_all()
    print("\n".join(cost.headlines()))


if __name__ == "__main__":
    main()
