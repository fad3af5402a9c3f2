"""Policies in the scheduler's claim: which due resources the limits let start (their turns between scopes are
scheduler/fairness.py's; what a rollout holds back is marked by scheduler/held.py; what each policy holds back now is
read by scheduler/policy_usage.py).

Claims take turns on one advisory lock (scheduler/claim.py), so each one counts what is in flight, working on a
change and failing after the last one committed, and no number of workers or schedulers can start more than a limit
allows. Policies themselves are read, never locked: an admin's open transaction on `policies` holds no claim up (the
claim sees the last committed limits). Only the claim takes from a token bucket; a worker never asks.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from sqlalchemy import Connection, text

from models.policy import BURST_SQL, failing, holding, in_scope, working
from models.status import BUSY
from scheduler import fairness

log = logging.getLogger(__name__)

IN_FLIGHT = """s.enqueued_at IS NOT NULL AND (s.node IS NULL OR EXISTS (
    SELECT FROM nodes AS n WHERE n.name = s.node AND n.last_seen_at >= now() - make_interval(secs => :node_silent)))"""
"""A reconcile claimed and not finished, unless its message waits in the queue of a node gone silent (it runs when the
node is back, or never): a dead host must not hold its scope's max_in_flight."""

COUNTS = f"""
SELECT p.name,
       count(*) FILTER (WHERE {IN_FLIGHT}) AS in_flight,
       count(*) FILTER (WHERE {holding("s", "p")}) AS unready,
       count(*) FILTER (WHERE {failing("s", "p")}) AS failures,
       (array_agg(s.kind || '/' || s.name ORDER BY s.rollout_started_at) FILTER (WHERE {failing("s", "p")}))[1:3]
           AS failed
FROM policies AS p JOIN (SELECT * FROM statuses WHERE {BUSY}) AS s ON {in_scope("s")}
WHERE s.enqueued_at IS NOT NULL OR ((p.max_unready IS NOT NULL OR p.max_failures IS NOT NULL) AND {working("s")})
GROUP BY p.name"""
"""Per policy: its scope's reconciles in flight, changes started and not done, and failures since resumed."""
TOKENS = f"""CASE WHEN p.max_per_minute IS NULL THEN NULL
    ELSE LEAST({BURST_SQL}, COALESCE(b.tokens, {BURST_SQL})
               + p.max_per_minute / 60.0 * GREATEST(extract(epoch FROM now() - b.refilled_at), 0)) END"""
"""The token bucket now: refilled at max_per_minute since a claim last took from it, up to its burst."""
STATE = "LEFT JOIN policy_statuses AS b ON b.name = p.name"

_LOCK = text("""SELECT pg_advisory_xact_lock(hashtextextended('setpoint claims', 0)), set_config('jit', 'off', true)""")
"""Claims take turns. Also turns JIT off for the claim's transaction: its estimates of the per-row scope checks are
high enough to make PostgreSQL compile them, which took seconds for a claim that runs in milliseconds (measured)."""
_NAMES = text("""
WITH forgotten AS (DELETE FROM policy_statuses AS b WHERE NOT EXISTS (SELECT FROM policies AS p WHERE p.name = b.name))
SELECT name FROM policies ORDER BY name""")
"""The policies' names, as last committed; what was kept of a deleted policy (its bucket, a back-off) goes with it at
the first claim after its deletion."""

_BUDGETS = text(f"""
SELECT p.name, p.kinds, p.selector, p.max_in_flight, p.max_per_minute, p.max_unready, p.max_failures,
       {TOKENS} AS tokens, COALESCE(b.backoff_until > now(), false) AS backing_off,
       COALESCE(c.in_flight, 0) AS in_flight, COALESCE(c.unready, 0) AS unready,
       COALESCE(c.failures, 0) AS failures, COALESCE(c.failed, '{{}}') AS failed
FROM policies AS p {STATE} LEFT JOIN ({COUNTS}) AS c ON c.name = p.name
""")

_WAITING = text(f"""
SELECT EXISTS (SELECT FROM statuses AS s JOIN policies AS p ON {in_scope("s")}
               WHERE p.name = ANY(:full) AND s.next_reconcile_at <= now() AND s.enqueued_at IS NULL)
""")
"""Whether a due resource waits for a policy whose reconciles in flight are at max_in_flight."""

_SPEND = text("""INSERT INTO policy_statuses AS b (name, tokens, refilled_at) VALUES (:name, :tokens, now())
ON CONFLICT (name) DO UPDATE SET tokens = EXCLUDED.tokens, refilled_at = EXCLUDED.refilled_at""")


@dataclasses.dataclass
class Budget:
    """What one policy's scope may still start in this claim (None: no such limit)."""

    name: str
    kinds: list[str] | None
    selector: dict[str, Any] | None
    starts: int | None
    rollouts: int | None
    tokens: float | None
    reason: str
    message: str
    in_flight_full: bool = False
    spent: int = 0


@dataclasses.dataclass
class Plan:
    budgets: dict[str, Budget]
    picked: list[tuple[str, str]]
    starting: set[tuple[str, str]]
    """Of those, the ones whose claim starts a change (and takes a slot of max_unready)."""
    scopes: dict[tuple[str, str], list[str]]
    capped: bool
    """A due resource waits for a reconcile in flight to finish (max_in_flight): worth claiming again soon."""


def names(conn: Connection) -> list[str]:
    """The policies' names, as last committed (none: no policy to obey, and claims need not take turns)."""
    return list(conn.execute(_NAMES).scalars())


def take_turn(conn: Connection) -> None:
    """Wait for this claim's turn, until the end of its transaction."""
    conn.execute(_LOCK)


def _budget(row: Any) -> Budget:
    limits = [row.max_in_flight - row.in_flight if row.max_in_flight is not None else None]
    if row.tokens is not None:
        limits.append(int(row.tokens))
    if row.backing_off:
        limits.append(0)
    starts = min((n for n in limits if n is not None), default=None)
    halted = row.max_failures is not None and row.failures >= row.max_failures
    rollouts = 0 if halted else (row.max_unready - row.unready if row.max_unready is not None else None)
    if halted:
        reason = "RolloutHalted"
        message = (
            f"policy {row.name} halted the rollout: {row.failures} resource(s) failed at their new generation "
            f"(max_failures {row.max_failures}: {', '.join(row.failed)}); fix them, or resume it with "
            f"`setpoint rollout resume {row.name}`"
        )
    else:
        reason = "RolloutWave"
        message = (
            f"policy {row.name}: {row.unready} of max_unready {row.max_unready} resources are working on a change "
            "(a new generation or a deletion); this one starts when one of them is done"
        )
    full = row.max_in_flight is not None and row.in_flight >= row.max_in_flight
    return Budget(row.name, row.kinds, row.selector, starts, rollouts, row.tokens, reason, message, full)


def plan(conn: Connection, batch: int, node_silent_s: float = 60.0) -> Plan:
    """Pick up to `batch` due resources that every policy of theirs lets start, in round-robin order of kinds."""
    budgets = {row.name: _budget(row) for row in conn.execute(_BUDGETS, {"node_silent": node_silent_s})}
    rows = fairness.round_robin(conn, budgets, batch)
    picked: list[tuple[str, str]] = []
    starting: set[tuple[str, str]] = set()
    scopes: dict[tuple[str, str], list[str]] = {}
    full = [b.name for b in budgets.values() if b.in_flight_full]
    capped = bool(full) and bool(conn.execute(_WAITING, {"full": full}).scalar())
    for row in rows:
        mine = [budgets[n] for n in row.policies if n in budgets]
        if any(b.starts is not None and b.starts <= 0 for b in mine):
            capped = True
            continue
        if row.rollout and any(b.rollouts is not None and b.rollouts <= 0 for b in mine):
            continue
        for b in mine:
            b.starts = None if b.starts is None else b.starts - 1
            if row.rollout:
                b.rollouts = None if b.rollouts is None else b.rollouts - 1
        picked.append((row.kind, row.name))
        if row.rollout:
            starting.add((row.kind, row.name))
        scopes[(row.kind, row.name)] = [b.name for b in mine]
        if len(picked) == batch:
            break
    return Plan(budgets, picked, starting, scopes, capped and not (rows and len(picked) == batch))


def spend(conn: Connection, plan: Plan, claimed: set[tuple[str, str]]) -> None:
    """In the claim's transaction: take its starts from the token buckets."""
    for key in claimed:
        for name in plan.scopes.get(key, ()):
            plan.budgets[name].spent += 1
    spent = [{"name": b.name, "tokens": b.tokens - b.spent} for b in plan.budgets.values() if b.tokens is not None]
    if spent:
        conn.execute(_SPEND, spent)
