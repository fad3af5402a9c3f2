"""Policies in the scheduler's claim: which due resources the limits let start, what a rollout holds back, and
what each policy is holding back now (for `setpoint get policies` and the metrics).

Claims take turns on one advisory lock (scheduler/claim.py), so each one counts what is in flight, working on a
change and failing after the last one committed, and no number of workers or schedulers can start more than a limit
allows. Policies themselves are read, never locked: an admin's open transaction on `policies` holds no claim up (the
claim sees the last committed limits). Only the claim takes from a token bucket; a worker never asks.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError

from models.policy import BURST_SQL, failing, holding, in_scope, to_start, working
from models.status import BUSY

log = logging.getLogger(__name__)

COUNTS = f"""
SELECT p.name,
       count(*) FILTER (WHERE s.enqueued_at IS NOT NULL) AS in_flight,
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

_ROLLOUT = to_start("s")
_CANDIDATES = """
SELECT f.kind, f.name, f.next_reconcile_at, f.rollout, m.policies
FROM (SELECT s.kind, s.name, s.next_reconcile_at, s.labels, {rollout} AS rollout
      FROM statuses AS s
      WHERE s.next_reconcile_at <= now() AND s.next_reconcile_at >= :after AND s.enqueued_at IS NULL {excluded}
      ORDER BY s.next_reconcile_at LIMIT :window) AS f
CROSS JOIN LATERAL (SELECT COALESCE(array_agg(p.name::text ORDER BY p.name), '{{}}') AS policies
                    FROM policies AS p WHERE {scope}) AS m
"""
"""The first due resources from `after` on, in due order, that no exhausted policy and no saturated scope stops, with
the policies whose scope they are in. What is left out is left out by a plain condition on each row, so that the index
of due times is read in order and only as far as needed (a subquery per row cost about 10 µs, for each of a backlog's
rows at each claim)."""

PASSES = 8
"""How many windows of candidates one claim reads at most: each next one leaves out the scopes that filled the
earlier ones, so a backlog of one scope (100,000 due, or held to max_in_flight 1) cannot hide another behind it. A
scope behind more than seven such backlogs waits until one of them shrinks below a window (2,000)."""


def _in_scope(budget: Budget, params: dict[str, Any]) -> str:
    """`s` is in the budget's scope, as a plain condition whose values are bound in `params`."""
    i = len(params)
    params[f"k{i}"], params[f"s{i}"] = budget.kinds, budget.selector
    return f"""((CAST(:k{i} AS text[]) IS NULL OR s.kind = ANY(CAST(:k{i} AS text[])))
             AND (CAST(:s{i} AS jsonb) IS NULL OR s.labels @> CAST(:s{i} AS jsonb)))"""


def _excluding(budgets: list[Budget], rollout_only: bool, params: dict[str, Any]) -> str:
    rollout = f" AND {_ROLLOUT}" if rollout_only else ""
    return "".join(f"\n        AND NOT ({_in_scope(b, params)}{rollout})" for b in budgets)


def _leaving_out(groups: list[Group], budgets: dict[str, Budget], params: dict[str, Any]) -> str:
    """Rows of these groups (a kind and exactly the policies it is in) left out."""
    said = ""
    for kind, names in groups:
        i = len(params)
        params[f"g{i}"] = kind
        scopes = [_in_scope(b, params) if b.name in names else f"NOT {_in_scope(b, params)}" for b in budgets.values()]
        said += f"\n        AND NOT (s.kind = :g{i} AND {' AND '.join(scopes) or 'true'})"
    return said


Group = tuple[str, tuple[str, ...]]
"""A scope for fairness: a kind and the policies whose scope a resource of it is in."""


def _candidates(
    conn: Connection, budgets: dict[str, Budget], window: int, after: datetime | None, saturated: list[Group]
) -> list[Any]:
    params: dict[str, Any] = {}
    stopped = [b for b in budgets.values() if b.starts is not None and b.starts <= 0]
    held = [b for b in budgets.values() if b.rollouts is not None and b.rollouts <= 0 and b not in stopped]
    excluded = (
        _excluding(stopped, False, params) + _excluding(held, True, params) + _leaving_out(saturated, budgets, params)
    )
    statement = text(_CANDIDATES.format(rollout=_ROLLOUT, excluded=excluded, scope=in_scope("f")))
    selectors = [bindparam(k, type_=JSONB) for k in params if k.startswith("s")]
    values = {**params, "window": window, "after": after or datetime.min.replace(tzinfo=UTC)}
    return list(conn.execute(statement.bindparams(*selectors), values))


def _round_robin(conn: Connection, budgets: dict[str, Budget], batch: int) -> list[Any]:
    """The due resources worth considering, in round-robin order of their groups (the first due of each group, then
    the second, ...). A window that one group fills (`batch` of its rows or more) is read on from its end, leaving that
    group out, up to PASSES windows."""
    window = max(4 * batch, 2_000)
    found: dict[tuple[str, str], Any] = {}
    saturated: list[Group] = []
    after = None
    for _ in range(PASSES):
        rows = _candidates(conn, budgets, window, after, saturated)
        found.update({(r.kind, r.name): r for r in rows if (r.kind, r.name) not in found})
        if len(rows) < window:
            break
        sizes = collections.Counter((r.kind, tuple(r.policies)) for r in found.values())
        filled = [g for g, n in sizes.items() if n >= batch and g not in saturated]
        if not filled:
            break
        saturated += filled
        after = rows[-1].next_reconcile_at
    rank: collections.Counter[Group] = collections.Counter()
    ordered = []
    for r in sorted(found.values(), key=lambda r: (r.next_reconcile_at, r.kind, r.name)):
        group = (r.kind, tuple(r.policies))
        rank[group] += 1
        ordered.append((rank[group], r.next_reconcile_at, r.kind, r.name, r))
    return [entry[-1] for entry in sorted(ordered, key=lambda e: e[:4])]


_WAITING = text(f"""
SELECT EXISTS (SELECT FROM statuses AS s JOIN policies AS p ON {in_scope("s")}
               WHERE p.name = ANY(:full) AND s.next_reconcile_at <= now() AND s.enqueued_at IS NULL)
""")
"""Whether a due resource waits for a policy whose reconciles in flight are at max_in_flight."""

_SPEND = text("""INSERT INTO policy_statuses AS b (name, tokens, refilled_at) VALUES (:name, :tokens, now())
ON CONFLICT (name) DO UPDATE SET tokens = EXCLUDED.tokens, refilled_at = EXCLUDED.refilled_at""")

_HOLD = text("SELECT setpoint_hold(:holds, CAST(:kinds AS text[]), CAST(:names AS text[]), :most)").bindparams(
    bindparam("holds", type_=JSONB)
)
HELD_PER_CLAIM = 500
"""How many waiting changes one claim marks Held at most (the rest at the next ones): marking is for people to
read, and must not make a claim slow (5,000 at once took 1.4 s)."""


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


def plan(conn: Connection, batch: int) -> Plan:
    """Pick up to `batch` due resources that every policy of theirs lets start, in round-robin order of kinds."""
    budgets = {row.name: _budget(row) for row in conn.execute(_BUDGETS)}
    rows = _round_robin(conn, budgets, batch)
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


def holds(plan: Plan | None) -> list[dict[str, str]]:
    """The policies whose rollout is full or halted, with the reason and message their held resources show."""
    if plan is None:
        return []
    return [
        {"name": b.name, "reason": b.reason, "message": b.message}
        for b in plan.budgets.values()
        if b.rollouts is not None and b.rollouts <= 0
    ]


def mark_held(engine: Engine, held: list[dict[str, str]], released: list[tuple[str, str]]) -> None:
    """After the claim committed, in a transaction of its own: mark Held (up to HELD_PER_CLAIM) the due changes that a
    full or halted rollout keeps waiting; the `released` ones, held until this claim, are Pending again."""
    if not held and not released:
        return
    kinds, names = [k for k, _ in released], [n for _, n in released]
    try:
        with engine.begin() as conn:
            conn.execute(_HOLD, {"holds": held, "kinds": kinds, "names": names, "most": HELD_PER_CLAIM})
    except DBAPIError as error:  # what people read, not what runs: the claim's messages must still be sent
        log.warning("could not mark what the rollouts hold back (next claim tries again): %s", error.orig)


_USAGE = text(f"""
SELECT p.name, p.kinds, p.selector, p.max_in_flight, p.max_per_minute, p.burst, p.max_unready, p.max_failures,
       p.resumed_at, b.backoff_until, {TOKENS} AS tokens,
       COALESCE(c.in_flight, 0) AS in_flight, COALESCE(c.unready, 0) AS unready,
       COALESCE(c.failures, 0) AS failures, COALESCE(c.failed, '{{}}') AS failed,
       (SELECT count(*) FROM statuses AS s
        WHERE {in_scope("s")} AND s.next_reconcile_at <= now() AND s.enqueued_at IS NULL
          AND s.phase <> 'Held') AS waiting,
       (SELECT count(*) FROM statuses AS s
        WHERE ({BUSY}) AND s.phase = 'Held'
          AND s.conditions @> jsonb_build_array(jsonb_build_object('type', 'Held', 'policy', p.name))) AS held
FROM policies AS p {STATE} LEFT JOIN ({COUNTS}) AS c ON c.name = p.name
ORDER BY p.name
""")


@dataclasses.dataclass(frozen=True)
class Usage:
    """One policy, its limits, and what its scope is doing now."""

    name: str
    kinds: list[str] | None
    selector: dict[str, Any] | None
    max_in_flight: int | None
    max_per_minute: int | None
    burst: int | None
    max_unready: int | None
    max_failures: int | None
    resumed_at: datetime | None
    backoff_until: datetime | None
    tokens: float | None
    in_flight: int
    unready: int
    """Resources of the scope working on a change (a new generation or a deletion, started and not done)."""
    failures: int
    """Changes failing since the last resume: the rollout halts at max_failures."""
    failed: list[str]
    """The first of those (Kind/name)."""
    waiting: int
    """Due and not claimed yet: held back by max_in_flight or max_per_minute, or next in line."""
    held: int
    """Phase Held: new generations a rollout limit keeps waiting."""

    @property
    def halted(self) -> bool:
        return self.max_failures is not None and self.failures >= self.max_failures

    def scope(self) -> str:
        kinds = ",".join(self.kinds) if self.kinds else "all kinds"
        return kinds + (f" labels {json.dumps(self.selector, sort_keys=True)}" if self.selector else "")


def usage(conn: Connection) -> list[Usage]:
    """What each policy holds back now (in the connection's transaction, with JIT off for it: compiling this query
    took half a second, reading it a millisecond, measured at 100,000 resources)."""
    conn.execute(_NO_JIT)
    return [Usage(**row) for row in conn.execute(_USAGE).mappings()]


_NO_JIT = text("SET LOCAL jit = off")


_RESUME = text("UPDATE policies SET resumed_at = now() WHERE name = :name")


def resume(engine: Engine, name: str) -> bool:
    """Resume a halted rollout: failures of resources whose rollout started before now no longer count. False if
    there is no such policy."""
    with engine.begin() as conn:
        return conn.execute(_RESUME, {"name": name}).rowcount == 1
