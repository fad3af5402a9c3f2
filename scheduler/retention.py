"""Run history's retention rule: keep every resource's last N routine runs, and changes and failures for D days.
Desired-state history's (`changes`): keep every resource's last N changes; a deleted one's go D days after its delete.

A resource is one life of a name (its uid): the runs of an earlier resource that had the name count apart, and go
once they are older than D days. Runs recorded before uids (uid NULL) count by name, as they always did.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

_PRUNE = text("""
DELETE FROM runs WHERE id IN (
    SELECT id FROM (
        SELECT id, kind, name, uid, outcome, started_at,
               row_number() OVER (PARTITION BY kind, name, uid, outcome IN ('noop', 'paused')
                                  ORDER BY started_at DESC, id DESC) AS newest
        FROM runs
    ) AS ranked
    WHERE (newest > :keep
           AND (outcome IN ('noop', 'paused') OR started_at < now() - make_interval(days => :days)))
       -- a resource that is gone keeps nothing past the retention period
       OR (started_at < now() - make_interval(days => :days)
           AND NOT EXISTS (SELECT 1 FROM statuses AS s WHERE s.kind = ranked.kind AND s.name = ranked.name
                                                          AND (ranked.uid IS NULL OR s.uid = ranked.uid)))
)
""")


def prune(engine: Engine, *, keep: int, days: int) -> int:
    """Delete the runs the rule no longer keeps; returns how many went."""
    with engine.begin() as conn:
        return conn.execute(_PRUNE, {"keep": keep, "days": days}).rowcount


_PRUNE_CHANGES = text("""
DELETE FROM changes WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY kind, name, uid ORDER BY id DESC) AS newest FROM changes
    ) AS ranked
    WHERE newest > :keep
)
OR id IN (
    SELECT c.id FROM changes AS c
    JOIN (SELECT kind, name, uid, max(id) AS deleted FROM changes
          WHERE operation = 'delete' AND at < now() - make_interval(days => :days) GROUP BY kind, name, uid) AS gone
      ON c.kind = gone.kind AND c.name = gone.name AND c.uid IS NOT DISTINCT FROM gone.uid AND c.id <= gone.deleted
)
""")


def prune_changes(engine: Engine, *, keep: int, days: int) -> int:
    """Delete the changes of desired state the rule no longer keeps; returns how many went."""
    with engine.begin() as conn:
        return conn.execute(_PRUNE_CHANGES, {"keep": keep, "days": days}).rowcount
