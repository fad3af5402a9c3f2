"""Run history's retention rule: keep every resource's last N routine runs, and changes and failures for D days.
Desired-state history's (`changes`): keep every resource's last N changes (and apart, its last N reconcile-now
requests, so clicks never push out the edits a rollback needs); a deleted one's go D days after its delete.
Events go after SETPOINT_EVENTS_DAYS, or once more than SETPOINT_EVENTS_KEPT newer ones exist.

A resource is one life of a name (its uid): the runs of an earlier resource that had the name count apart, and go
once they are older than D days. Runs recorded before uids (uid NULL) count by name, as they always did.
Webhook deliveries done with (delivered or failed) go after D days too; a pending one stays until it is done.
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


_PRUNE_DELIVERIES = text("""
DELETE FROM deliveries WHERE last_attempt_at < now() - make_interval(days => :days) AND state <> 'pending'
""")


def prune(engine: Engine, *, keep: int, days: int) -> int:
    """Delete the runs the rule no longer keeps (and old webhook deliveries); returns how many runs went."""
    with engine.begin() as conn:
        conn.execute(_PRUNE_DELIVERIES, {"days": days})
        return conn.execute(_PRUNE, {"keep": keep, "days": days}).rowcount


_PRUNE_KEPT = text("""
WITH touched AS (SELECT DISTINCT kind, name, uid FROM changes WHERE id > :after),
ranked AS (
    SELECT c.id, row_number() OVER (PARTITION BY c.kind, c.name, c.uid, c.operation = 'reconcile'
                              ORDER BY c.id DESC) AS newest
    FROM changes AS c JOIN touched AS t ON c.kind = t.kind AND c.name = t.name AND c.uid IS NOT DISTINCT FROM t.uid
)
DELETE FROM changes WHERE id IN (SELECT id FROM ranked WHERE newest > :keep)
""")
_PRUNE_GONE = text("""
DELETE FROM changes AS c USING (
    SELECT kind, name, uid, max(id) AS deleted FROM changes
    WHERE operation = 'delete' AND at < now() - make_interval(days => :days) GROUP BY kind, name, uid
) AS gone
WHERE c.kind = gone.kind AND c.name = gone.name AND c.uid IS NOT DISTINCT FROM gone.uid AND c.id <= gone.deleted
""")


def prune_changes(engine: Engine, *, keep: int, days: int, after: int = 0) -> tuple[int, int]:
    """Delete the changes of desired state the rule no longer keeps. Only resources changed since the change `after`
    can have more than `keep` (0: look at all); pass the newest id this returns to the next call. Returns (how many
    went, the newest id)."""
    with engine.begin() as conn:
        newest = conn.execute(text("SELECT COALESCE(max(id), 0) FROM changes")).scalar_one()
        kept = conn.execute(_PRUNE_KEPT, {"keep": keep, "after": after}).rowcount
        return kept + conn.execute(_PRUNE_GONE, {"days": days}).rowcount, newest


_PRUNE_EVENTS = text("""
DELETE FROM events
WHERE at < now() - make_interval(days => :days)
   OR id <= (SELECT id FROM events ORDER BY id DESC OFFSET :kept LIMIT 1)
""")


def prune_events(engine: Engine, *, kept: int, days: int) -> int:
    """Publish what waits in the inbox (so it never grows when nobody reads), then delete events older than `days`
    or beyond the newest `kept`; returns how many went."""
    with engine.begin() as conn:
        conn.execute(text("SELECT setpoint_publish_events()"))
    with engine.begin() as conn:
        return conn.execute(_PRUNE_EVENTS, {"kept": kept, "days": days}).rowcount
