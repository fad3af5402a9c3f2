"""The watcher's two conversations with PostgreSQL: which watches this node keeps, and "this resource is due now".

Watches follow the desired state: they are computed from the desired rows of the resources pinned to this node
(a deleted, paused or moved resource has none), never stored. Making a resource due goes through its status row
and the scheduler's wake-up, so the one-pending-message guarantee and the per-resource lock hold as for any
other reconcile.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Text

from models import triggers
from worker.controller import Controller, Watch

log = logging.getLogger("setpoint.watch")

Key = tuple[str, str]
"""A resource: (kind, name)."""

CHANNEL = "setpoint_watch"
"""Notified when a worker pins a resource to its node: that node's watcher loads its watches again."""

MARKED = "watch"
"""The payload of the scheduler's wake-up when the watcher made resources due: watchers need not load again."""

_PINNED = """
SELECT d.name, d.uid::text || '/' || d.generation AS version FROM {table} AS d
JOIN statuses AS s ON s.kind = :kind AND s.name = d.name
WHERE s.node = :node AND s.deleted_at IS NULL AND NOT d.paused
"""
_ROWS = "SELECT to_jsonb(d) AS desired FROM {table} AS d WHERE d.name = ANY(:names)"


@dataclasses.dataclass(frozen=True)
class Watched:
    """A resource's watches, as computed from one version (uid and generation) of its desired row."""

    version: str
    watches: tuple[Watch, ...]


def watching(controller: Controller[Any, Any]) -> bool:
    """Whether a kind says what to watch at all (most kinds do not, and cost the watcher nothing)."""
    return type(controller).watches is not Controller.watches


def load(
    conn: Connection, node: str, controllers: dict[str, Controller[Any, Any]], known: dict[Key, Watched]
) -> dict[Key, Watched]:
    """The watches of every resource pinned to `node`. Only the rows changed since `known` are read and given to
    their controller (a resync of 10,000 unchanged resources reads two short columns); a row its controller
    cannot read is skipped, and logged."""
    found: dict[Key, Watched] = {}
    for kind, controller in controllers.items():
        if not watching(controller):
            continue
        table = controller.model.__tablename__
        changed: dict[str, str] = {}
        for row in conn.execute(text(_PINNED.format(table=table)), {"kind": kind, "node": node}):
            seen = known.get((kind, row.name))
            if seen is not None and seen.version == row.version:
                found[(kind, row.name)] = seen
            else:
                changed[row.name] = row.version
        if not changed:
            continue
        for row in conn.execute(text(_ROWS.format(table=table)), {"names": list(changed)}):
            name = row.desired["name"]
            try:
                kept = tuple(controller.watches(controller.model.model_validate(row.desired)))
            except Exception as error:  # a hostile or old row: it heals at its interval, unwatched
                log.warning(
                    "cannot watch", extra={"kind": kind, "resource": name, "error": f"{type(error).__name__}: {error}"}
                )
                continue
            if name in changed:
                found[(kind, name)] = Watched(changed[name], kept)
    return found


@dataclasses.dataclass(frozen=True)
class Marked:
    """What making resources due came to: those now due, and those being reconciled right now (a reconcile that
    started before the event may have missed it: they are marked again once it ends)."""

    due: frozenset[Key]
    running: frozenset[Key]


_MARK = text(f"""
WITH hit AS (
    SELECT kind, name, next_reconcile_at > now() AS later,
           enqueued_at IS NOT NULL AND picked_at >= enqueued_at AS running
    FROM statuses
    WHERE (kind, name) IN (SELECT * FROM unnest(:kinds, :names)) AND node = :node AND deleted_at IS NULL
), due AS (
    UPDATE statuses AS s SET next_reconcile_at = now()
    FROM hit WHERE s.kind = hit.kind AND s.name = hit.name AND hit.later AND NOT hit.running
    RETURNING s.kind, s.name
), woke AS (
    SELECT pg_notify('{triggers.CHANNEL}', '{MARKED}') FROM (SELECT FROM due LIMIT 1) AS one
)
SELECT hit.kind, hit.name, hit.running, (SELECT count(*) FROM woke) AS woke FROM hit
""").bindparams(bindparam("kinds", type_=ARRAY(Text)), bindparam("names", type_=ARRAY(Text)))


def mark_due(conn: Connection, node: str, keys: set[Key]) -> Marked:
    """Make these resources of `node` due now, in one statement that also wakes the scheduler. One already due
    (a message pending that has not started) needs nothing more: its reconcile will look after the event."""
    ordered = sorted(keys)
    rows = conn.execute(_MARK, {"kinds": [k for k, _ in ordered], "names": [n for _, n in ordered], "node": node}).all()
    running = frozenset((row.kind, row.name) for row in rows if row.running)
    return Marked(frozenset((row.kind, row.name) for row in rows) - running, running)
