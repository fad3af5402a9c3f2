"""Run history's retention rule: keep every resource's last N routine runs, and changes and failures for D days.

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
