"""Reaction: from an SQL UPDATE of a desired row to its status showing that generation observed and ready.

Setpoint reacts through the desired table's NOTIFY; its ceiling is the bare chain (bench/bare_chain.py), the
same trip with no Setpoint code, measured alternately with it (change by change) so that both see the same
machine. The naive peer (a Celery beat entry, a cron job, one APScheduler job per resource) does not know that
anything changed: it sends a reconcile of every resource once per period, so a change waits for the next pass.
`PeriodicLoop` is that peer, run for real at a short period.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections.abc import Callable, Sequence

import psycopg
from celery import Celery

from bench import bare_chain, resources
from models.database import libpq_url
from worker.celery_app import TASK

POLL_S = 0.002
"""How often the status is read while waiting: the measurement's resolution."""


@dataclasses.dataclass(frozen=True)
class Chain:
    """A way from a change to its status: how to make the change, and how to see it shown."""

    change: str
    """SQL making a new generation of the resource %(name)s, RETURNING it."""
    shown: str
    """SQL answering whether generation %(generation)s of %(name)s is observed and ready."""


SETPOINT = Chain(
    f"UPDATE {resources.TABLE} SET payload = payload + 1 WHERE name = %(name)s RETURNING generation",
    f"SELECT observed_generation = %(generation)s AND ready FROM statuses WHERE kind = '{resources.KIND}' "
    "AND name = %(name)s",
)
BARE = Chain(bare_chain.CHANGE, bare_chain.SHOWN)


def measure(
    database_url: str,
    chains: Sequence[Chain],
    names: Sequence[str],
    samples: int,
    pause: Callable[[int], None],
    warmup: int = 0,
    timeout_s: float = 30.0,
) -> list[list[float]]:
    """For each of `samples` (after `warmup` uncounted ones), pause(i), then change one resource through each
    chain in turn and time it until its status shows it; one list of latencies per chain."""
    latencies: list[list[float]] = [[] for _ in chains]
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        for i in range(warmup + samples):
            pause(i)
            for chain, measured in zip(chains, latencies, strict=True):
                latency = _react(conn, chain, names[i % len(names)], timeout_s)
                if i >= warmup:
                    measured.append(latency)
    return latencies


def random_pause(low_s: float, high_s: float) -> Callable[[int], None]:
    """Pause for a random while: changes come at no particular moment."""
    rng = random.Random()
    return lambda _: time.sleep(rng.uniform(low_s, high_s))


def _react(conn: psycopg.Connection, chain: Chain, name: str, timeout_s: float) -> float:
    started = time.perf_counter()
    row = conn.execute(chain.change, {"name": name}).fetchone()  # type: ignore[arg-type]
    assert row is not None, f"no resource named {name}"
    deadline = started + timeout_s
    asked = {"generation": row[0], "name": name}
    while True:
        shown = conn.execute(chain.shown, asked).fetchone()  # type: ignore[arg-type]
        if shown and shown[0]:
            return time.perf_counter() - started
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{name} generation {row[0]} not observed and ready within {timeout_s}s")
        time.sleep(POLL_S)


class PeriodicLoop:
    """The naive peer: every period, send a reconcile of every resource, whether or not it changed."""

    def __init__(self, app: Celery, queue: str, names: Sequence[str], period_s: float) -> None:
        self.app = app
        self.queue = queue
        self.names = list(names)
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._first_pass = time.monotonic()

    def __enter__(self) -> PeriodicLoop:
        self._first_pass = time.monotonic()
        self._thread.start()
        return self

    def phases(self, samples: int) -> Callable[[int], None]:
        """A pause that makes change i come at its own point of a period, evenly spread over the period (in
        shuffled order), so that a few samples already show the whole range a change may have to wait."""
        order = list(range(samples))
        random.Random(6).shuffle(order)

        def pause(i: int) -> None:
            phase = (order[i] + 0.5) / samples * self.period_s
            elapsed = time.monotonic() - self._first_pass - phase
            time.sleep(self._first_pass + phase + math.ceil(elapsed / self.period_s) * self.period_s - time.monotonic())

        return pause

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        next_pass = time.monotonic()
        while not self._stop.is_set():
            with self.app.producer_or_acquire() as producer:
                for name in self.names:
                    self.app.send_task(TASK, args=[resources.KIND, name], queue=self.queue, producer=producer)
            next_pass += self.period_s
            self._stop.wait(max(0.0, next_pass - time.monotonic()))
