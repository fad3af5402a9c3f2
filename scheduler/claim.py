"""Claiming due resources: the database decides what is due and guarantees one pending message per resource."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import Engine, text

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
_CLAIM = text(f"""
WITH due AS (
    SELECT kind, name FROM statuses
    WHERE next_reconcile_at <= now()
      AND (enqueued_at IS NULL
           OR (COALESCE(picked_at, '-infinity') < enqueued_at AND enqueued_at < now() - {_INTERVAL}
               AND {_NODE_ALIVE})
           OR (picked_at >= enqueued_at AND picked_at < now() - GREATEST({_INTERVAL},
                                                                      make_interval(secs => :retry_window))
               AND {_NOT_LOCKED})
           OR (picked_at >= enqueued_at AND picked_at < now() - make_interval(secs => :running_limit)))
    ORDER BY next_reconcile_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
)
UPDATE statuses AS s SET enqueued_at = now(), claim = s.claim + 1
FROM due WHERE s.kind = due.kind AND s.name = due.name
RETURNING s.kind, s.name, s.claim, s.node, s.next_reconcile_at, now() AS claimed_at
""")


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
) -> list[Claim]:
    """Claim up to `batch` due resources in one committed transaction (enqueue only after this returns)."""
    params = {
        "batch": batch,
        "default_interval": default_interval_seconds,
        "retry_window": retry_window_s,
        "running_limit": running_limit_s,
        "node_silent": node_silent_s,
    }
    with engine.begin() as conn:
        rows = conn.execute(_CLAIM, params).all()
    return [Claim(r.kind, r.name, r.claim, r.node, r.next_reconcile_at, r.claimed_at) for r in rows]


_RELEASE = text("UPDATE statuses SET enqueued_at = NULL WHERE kind = :kind AND name = :name AND claim = :claim")


def release(engine: Engine, claims: list[Claim]) -> None:
    """Undo claims whose messages could not be sent, so the next tick tries them again."""
    with engine.begin() as conn:
        conn.execute(_RELEASE, [{"kind": c.kind, "name": c.name, "claim": c.claim} for c in claims])
