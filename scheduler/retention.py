"""Run history's retention rule: keep every resource's last N routine runs, and changes and failures for D days.
Events go after SETPOINT_EVENTS_DAYS, or once more than SETPOINT_EVENTS_KEPT newer ones exist.

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
