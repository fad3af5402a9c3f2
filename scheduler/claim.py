"""Claiming due resources: the database decides what is due and guarantees one pending message per resource."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import Engine, text

# A claimed resource is marked enqueued. It is claimable again only when its reconcile has finished
# (the worker clears the mark) or when the mark is older than one interval: the message was lost
# (worker host gone, Redis flushed), and the resource must not stay stuck.
_CLAIM = text("""
WITH due AS (
    SELECT kind, name FROM statuses
    WHERE next_reconcile_at <= now()
      AND (enqueued_at IS NULL
           OR enqueued_at < now() - make_interval(secs => COALESCE(interval_seconds, :default_interval)))
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


def claim_due(engine: Engine, *, batch: int, default_interval_seconds: int) -> list[Claim]:
    """Claim up to `batch` due resources in one committed transaction (enqueue only after this returns)."""
    with engine.begin() as conn:
        rows = conn.execute(_CLAIM, {"batch": batch, "default_interval": default_interval_seconds}).all()
    return [Claim(r.kind, r.name, r.claim, r.node, r.next_reconcile_at, r.claimed_at) for r in rows]
