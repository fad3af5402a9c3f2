"""The worker nodes as an admin manages them: which are alive, and moving resources off one that is gone.

A resource's `statuses.node` is where it lives: copied from its desired row's `node` (the admin's binding),
or pinned by the first worker of a host-local kind. Draining moves pins to another node; forgetting unpins
them (the next worker pins them) and drops the tombstones left on the node, so their names can be reused.
Neither touches a desired binding: `node` is immutable in desired rows, so those are listed for the admin
to delete and insert with a new node. Every change is made due at once, in one transaction.

A node's queue in the broker (`<queue>.node.<node>`) holds up to one message per resource there. Forgetting a
node, or draining it until nothing is left on it, deletes that queue: its messages are superseded (a worker's
claim check drops them), and a node re-created under each new host name would otherwise leave one behind
forever. The queue is deleted last in the transaction, so a broker that cannot be reached changes nothing;
a message deleted for a resource still bound there is sent again once a worker of that node heartbeats.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta

import redis
from sqlalchemy import Connection, Engine, text

from models.node import NODE_PATTERN
from models.triggers import CHANNEL
from setpoint.errors import UsageError

Ref = tuple[str, str]
"""(kind, name) of a resource."""


@dataclasses.dataclass(frozen=True)
class NodeView:
    name: str
    alive: bool
    last_seen_at: datetime | None
    since_s: float | None
    """Seconds since the last heartbeat, by the database's clock; None if it was never seen."""
    started_at: datetime | None
    worker: str | None
    version: str | None
    resources: int
    deleting: int


@dataclasses.dataclass(frozen=True)
class Moved:
    """What a drain or a forget did: resources moved (or unpinned), tombstones forgotten, and what it left."""

    moved: list[Ref]
    forgotten: list[Ref]
    bound: list[Ref]
    """Resources whose desired row names the node: only deleting and inserting them with a new node moves them."""
    dropped: int | None
    """How many messages the node's queue held when it was deleted; None if it was kept (resources are left)."""


_LIST = text("""
WITH named AS (SELECT name FROM nodes UNION SELECT node FROM statuses WHERE node IS NOT NULL)
SELECT named.name, n.last_seen_at, n.started_at, n.worker, n.version,
       COALESCE(n.last_seen_at >= now() - make_interval(secs => :silent), false) AS alive,
       EXTRACT(EPOCH FROM now() - n.last_seen_at) AS since_s,
       (SELECT count(*) FROM statuses AS s WHERE s.node = named.name) AS resources,
       (SELECT count(*) FROM statuses AS s WHERE s.node = named.name AND s.deleted_at IS NOT NULL) AS deleting
FROM named LEFT JOIN nodes AS n ON n.name = named.name
ORDER BY named.name
""")


def listing(engine: Engine, *, silent_s: float) -> list[NodeView]:
    """Every node a worker has heartbeated from or a resource names, with how many resources live there."""
    with engine.connect() as conn:
        rows = conn.execute(_LIST, {"silent": silent_s}).all()
    return [
        NodeView(
            r.name,
            r.alive,
            r.last_seen_at,
            float(r.since_s) if r.since_s is not None else None,
            r.started_at,
            r.worker,
            r.version,
            r.resources,
            r.deleting,
        )
        for r in rows
    ]


# Kinds whose desired table has a `node` column: found through the trigger that makes a table a kind.
_BOUND_TABLES = text("""
SELECT t.tgrelid::regclass::text AS desired,
       convert_from(substring(t.tgargs FROM 1 FOR length(t.tgargs) - 1), 'UTF8') AS kind
FROM pg_trigger AS t
WHERE t.tgname = 'setpoint_track' AND t.tgnargs = 1
  AND EXISTS (SELECT FROM pg_attribute AS a WHERE a.attrelid = t.tgrelid AND a.attname = 'node' AND NOT a.attisdropped)
""")


def _bound(conn: Connection, node: str) -> list[Ref]:
    found: list[Ref] = []
    for table in conn.execute(_BOUND_TABLES).all():
        names = conn.execute(text(f"SELECT name FROM {table.desired} WHERE node = :node ORDER BY name"), {"node": node})
        found.extend((table.kind, name) for name in names.scalars())
    return found


_ALIVE = text(
    "SELECT EXISTS (SELECT FROM nodes WHERE name = :node AND last_seen_at >= now() - make_interval(secs => :silent))"
)
_KNOWN = text(
    "SELECT EXISTS (SELECT FROM nodes WHERE name = :node) OR EXISTS (SELECT FROM statuses WHERE node = :node)"
)


def _check(conn: Connection, node: str, *, silent_s: float, force: bool) -> None:
    """Refuse a node nobody knows, and (unless forced) one that is alive: its worker still acts on its host."""
    if not conn.execute(_KNOWN, {"node": node}).scalar():
        raise UsageError(f"unknown node {node!r}: no worker has heartbeated from it and no resource is on it")
    if conn.execute(_ALIVE, {"node": node, "silent": silent_s}).scalar() and not force:
        raise UsageError(
            f"node {node!r} is alive (it sent a heartbeat within {silent_s:g}s): stop its worker first, "
            "or pass --force to move its resources while it runs"
        )


def _wake(conn: Connection) -> None:
    conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def _drop_queue(broker: redis.Redis, queue: str) -> int:
    """Delete a node's queue; how many messages it held."""
    with broker.pipeline(transaction=True) as pipe:
        pipe.llen(queue)
        pipe.delete(queue)
        held, _ = pipe.execute()
    return int(held)


_LEFT = text("SELECT EXISTS (SELECT FROM statuses WHERE node = :node)")


def _refs(rows: object) -> list[Ref]:
    return sorted((r.kind, r.name) for r in rows)  # type: ignore[attr-defined]


def drain(
    engine: Engine, broker: redis.Redis, node: str, to: str, *, queue: str, silent_s: float, force: bool = False
) -> Moved:
    """Move every resource pinned to `node` to `to` (an alive node), due at once; desired bindings stay. When
    nothing is left on `node`, delete its `queue` in the broker."""
    if not re.match(NODE_PATTERN, to):
        raise UsageError(f"--to must be a node name (letters, digits, '-', '_' or '.'), got {to!r}")
    if to == node:
        raise UsageError(f"--to names the node being drained, {node!r}: name another node")
    with engine.begin() as conn:
        _check(conn, node, silent_s=silent_s, force=force)
        if not conn.execute(_ALIVE, {"node": to, "silent": silent_s}).scalar():
            raise UsageError(f"node {to!r} has no live worker to take them: `setpoint node list` shows the live nodes")
        bound = _bound(conn, node)
        moved = conn.execute(
            text("""
UPDATE statuses SET node = :to, enqueued_at = NULL, next_reconcile_at = now()
WHERE node = :node AND NOT ((kind, name) = ANY (SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:names AS text[]))))
RETURNING kind, name"""),
            {"node": node, "to": to, "kinds": [k for k, _ in bound], "names": [n for _, n in bound]},
        )
        moved_refs = _refs(moved)
        left = conn.execute(_LEFT, {"node": node}).scalar()
        _wake(conn)
        result = Moved(moved_refs, [], bound, None if left else _drop_queue(broker, queue))
    return result


def forget(
    engine: Engine, broker: redis.Redis, node: str, *, queue: str, silent_s: float, force: bool = False
) -> Moved:
    """Unpin every resource on `node` (the next worker to reconcile it pins it), forget the tombstones left there
    (their teardown can no longer run), forget the node itself and delete its `queue` in the broker; desired
    bindings stay."""
    with engine.begin() as conn:
        _check(conn, node, silent_s=silent_s, force=force)
        bound = _bound(conn, node)
        forgotten = conn.execute(
            text("DELETE FROM statuses WHERE node = :node AND deleted_at IS NOT NULL RETURNING kind, name"),
            {"node": node},
        )
        forgotten_refs = _refs(forgotten)
        unpinned = conn.execute(
            text("""
UPDATE statuses SET node = NULL, enqueued_at = NULL, next_reconcile_at = now()
WHERE node = :node AND NOT ((kind, name) = ANY (SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:names AS text[]))))
RETURNING kind, name"""),
            {"node": node, "kinds": [k for k, _ in bound], "names": [n for _, n in bound]},
        )
        unpinned_refs = _refs(unpinned)
        conn.execute(text("DELETE FROM nodes WHERE name = :node"), {"node": node})
        _wake(conn)
        result = Moved(unpinned_refs, forgotten_refs, bound, _drop_queue(broker, queue))
    return result


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return str(timedelta(seconds=round(seconds))) + " ago"
