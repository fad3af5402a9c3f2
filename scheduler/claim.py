"""Claiming due resources: the database decides what is due, within the policies' limits (scheduler/policies.py),
and guarantees one pending message per resource."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, text

from models.policy import to_start
from scheduler import held, policies

# A claimed resource is marked enqueued. It is claimable again when its reconcile has finished (the
# worker clears the mark), or when its message was lost (worker host gone, Redis flushed): nobody
# picked it up within one interval, though a worker could have (a resource on a node waits in that
# node's queue while the node is silent: sending more would only pile them up there); or the worker
# that picked it up no longer holds its lock (dead: the database ended its session) and no quick retry
# can still be on its way; or it has run for longer than any reconcile may.
_NOT_LOCKED = """NOT EXISTS (
    SELECT 1 FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((hashtextextended(kind || '/' || name, 0) >> 32) & 4294967295)::oid
      AND l.objid = (hashtextextended(kind || '/' || name, 0) & 4294967295)::oid)"""
_INTERVAL = "make_interval(secs => COALESCE(interval_seconds, :default_interval))"
_NODE_ALIVE = """(node IS NULL OR EXISTS (
    SELECT 1 FROM nodes AS n
    WHERE n.name = statuses.node AND n.last_seen_at >= now() - make_interval(secs => :node_silent)))"""
_LOST = f"""(COALESCE(picked_at, '-infinity') < enqueued_at AND enqueued_at < now() - {_INTERVAL}
               AND {_NODE_ALIVE})
           OR (picked_at >= enqueued_at AND picked_at < now() - GREATEST({_INTERVAL},
                                                                      make_interval(secs => :retry_window))
               AND {_NOT_LOCKED})
           OR (picked_at >= enqueued_at AND picked_at < now() - make_interval(secs => :running_limit))"""
_DUE = f"next_reconcile_at <= now() AND (enqueued_at IS NULL OR {_LOST})"
# A claim of a change not started yet starts its rollout (scheduler/policies.py counts what is working on one).
_STARTED = f"""claimed_generation = s.generation,
    rollout_started_at = CASE WHEN {to_start("s")} THEN now() ELSE s.rollout_started_at END"""
_CLAIM = text(f"""
WITH due AS (
    SELECT kind, name FROM statuses
    -- a policy committed since this claim found none waits for the next claim, which obeys it
    WHERE {_DUE} AND NOT EXISTS (SELECT FROM policies)
    ORDER BY next_reconcile_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
)
UPDATE statuses AS s SET enqueued_at = now(), claim = s.claim + 1, {_STARTED}
FROM due WHERE s.kind = due.kind AND s.name = due.name
RETURNING s.kind, s.name, s.claim, s.node, s.next_reconcile_at, now() AS claimed_at, s.phase = 'Held' AS held
""")
"""The claim while no policy exists: the due index in order, nothing else read (what a deleted policy left Held is
Pending again once claimed)."""

CAPPED_AGAIN_S = 0.05
"""How soon the scheduler claims again while due resources wait for a slot of max_in_flight, at the soonest."""


def again_in_s(claim_took_s: float) -> float:
    """When to claim again while due resources wait for a slot: soon, but never spending more than a fifth of the
    time claiming (a claim with policies reads every due resource: a backlog makes it slower)."""
    return max(CAPPED_AGAIN_S, 4 * claim_took_s)


_CLAIM_PICKED = text(f"""
WITH picked AS (
    SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:names AS text[]), CAST(:starting AS boolean[]))
        AS picked (kind, name, starting)
),
-- a message lost on its way is sent again without asking the policies: it already holds its slot
lost AS (
    SELECT kind, name FROM statuses
    WHERE next_reconcile_at <= now() AND enqueued_at IS NOT NULL AND ({_LOST}) AND NOT {to_start("statuses")}
    ORDER BY next_reconcile_at LIMIT :batch
),
chosen AS (
    SELECT kind, name FROM statuses
    WHERE ((kind, name) IN (SELECT kind, name FROM lost)
           -- as planned: a change committed while the claim planned would start with no slot; it waits a claim
           OR EXISTS (SELECT FROM picked WHERE picked.kind = statuses.kind AND picked.name = statuses.name
                                           AND picked.starting = {to_start("statuses")}))
      AND {_DUE}
    FOR UPDATE SKIP LOCKED
)
UPDATE statuses AS s SET enqueued_at = now(), claim = s.claim + 1, {_STARTED}
FROM chosen WHERE s.kind = chosen.kind AND s.name = chosen.name
RETURNING s.kind, s.name, s.claim, s.node, s.next_reconcile_at, now() AS claimed_at, s.phase = 'Held' AS held
""")
"""The claim while policies exist: the due resources the policies let start (scheduler/policies.py picked them,
in the claims' turn), and any whose message was lost."""

_FREE_SUPERSEDED = text(f"""
UPDATE statuses SET enqueued_at = NULL, claim = claim + 1
WHERE next_reconcile_at <= now() AND enqueued_at IS NOT NULL AND ({_LOST}) AND {_NOT_LOCKED}
  AND {to_start("statuses")}
""")
"""A lost message whose resource has a newer change since (or gave its slot back), and that no reconcile is running:
not sent again as it was, but freed, so that the policies plan the change like any other (it needs a slot). Its claim
number moves on: should the lost message turn up after all, it is dropped as superseded."""


@dataclasses.dataclass(frozen=True)
class Claim:
    kind: str
    name: str
    claim: int
    node: str | None
    due_at: datetime
    claimed_at: datetime

    @property
    def lateness_s(self) -> float:
        return max((self.claimed_at - self.due_at).total_seconds(), 0.0)


def claim_due(
    engine: Engine,
    *,
    batch: int,
    default_interval_seconds: int,
    retry_window_s: float,
    running_limit_s: float,
    node_silent_s: float = 60.0,
    on_capped: Callable[[], None] | None = None,
) -> list[Claim]:
    """Claim up to `batch` due resources in one committed transaction (enqueue only after this returns).
    `on_capped` is called when a due resource waits for a slot of max_in_flight: the next tick need not wait
    its full period, since a slot frees whenever a reconcile finishes (workers do not wake the scheduler)."""
    params = {
        "batch": batch,
        "default_interval": default_interval_seconds,
        "retry_window": retry_window_s,
        "running_limit": running_limit_s,
        "node_silent": node_silent_s,
    }
    plan = None
    with engine.begin() as conn:
        if not policies.names(conn):
            rows = conn.execute(_CLAIM, params).all()
        else:
            policies.take_turn(conn)
            conn.execute(_FREE_SUPERSEDED, params)
            plan = policies.plan(conn, batch, node_silent_s)
            picked = {
                "kinds": [k for k, _ in plan.picked],
                "names": [n for _, n in plan.picked],
                "starting": [key in plan.starting for key in plan.picked],
            }
            rows = conn.execute(_CLAIM_PICKED, {**params, **picked}).all()
            policies.spend(conn, plan, {(r.kind, r.name) for r in rows})
    held.mark_held(engine, held.holds(plan), [(r.kind, r.name) for r in rows if r.held])
    if plan is not None and plan.capped and on_capped is not None:
        on_capped()
    return [Claim(r.kind, r.name, r.claim, r.node, r.next_reconcile_at, r.claimed_at) for r in rows]


_RELEASE = text("UPDATE statuses SET enqueued_at = NULL WHERE kind = :kind AND name = :name AND claim = :claim")


def release(engine: Engine, claims: list[Claim]) -> None:
    """Undo claims whose messages could not be sent, so the next tick tries them again."""
    with engine.begin() as conn:
        conn.execute(_RELEASE, [{"kind": c.kind, "name": c.name, "claim": c.claim} for c in claims])
