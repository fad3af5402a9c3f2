"""How one resource stands among the others: what it depends on, what depends on it, its owner and what it owns.

Read from the `dependencies` table (kept by the desired tables' triggers, models/links.py), the desired rows'
`owned_by` and the status rows, so the REST API's status, `setpoint describe` and `setpoint tree` say the same.
A dependency's readiness is the worker's own (worker/needs.py reads it with the reconcile's SQL).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import Connection, text

from worker import needs

MISSING = "Missing"
"""The phase shown for a resource that is named (a dependency, an owner) but has no row."""
MAX_TREE_NODES = 1000
"""The most resources `tree` walks: a tree larger than this is cut short, and says so."""

_READY = "COALESCE(s.ready AND s.observed_generation = s.generation AND s.deleted_at IS NULL, false)"

_DEPENDENTS = f"""
SELECT d.kind, d.name, COALESCE(s.phase, '{MISSING}') AS phase, {_READY} AS ready
FROM dependencies AS d LEFT JOIN statuses AS s ON s.kind = d.kind AND s.name = d.name
WHERE d.on_kind = :kind AND d.on_name = :name ORDER BY d.kind, d.name
"""

_ONE = f"""
SELECT COALESCE(s.phase, '{MISSING}') AS phase, {_READY} AS ready
FROM (SELECT) AS one LEFT JOIN statuses AS s ON s.kind = :kind AND s.name = :name
"""

_OWNING_TABLES = """
SELECT k.kind, k.plural FROM setpoint_kinds() AS k
WHERE EXISTS (SELECT FROM pg_attribute AS a
              WHERE a.attrelid = to_regclass(k.plural) AND a.attname = 'owned_by' AND NOT a.attisdropped)
ORDER BY k.kind
"""
"""Every kind's table that can hold owned resources (a user's kind made before migration 0010 may not)."""


@dataclasses.dataclass(frozen=True)
class Link:
    """Another resource, as this one sees it: `ref` is `Kind/name`."""

    ref: str
    phase: str
    ready: bool

    def as_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "phase": self.phase, "ready": self.ready}


@dataclasses.dataclass(frozen=True)
class Neighbours:
    dependencies: tuple[Link, ...]
    dependents: tuple[Link, ...]
    owner: Link | None
    owned: tuple[Link, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "dependencies": [link.as_json() for link in self.dependencies],
            "dependents": [link.as_json() for link in self.dependents],
            "owner": self.owner.as_json() if self.owner else None,
            "owned": [link.as_json() for link in self.owned],
        }


@dataclasses.dataclass(frozen=True)
class Node:
    """One resource of a tree, with what it depends on and what it owns, each a tree of its own."""

    ref: str
    phase: str
    ready: bool
    dependencies: tuple[Node, ...] = ()
    owned: tuple[Node, ...] = ()
    seen: bool = False
    """Already drawn elsewhere in the tree: its branches are not repeated."""

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"ref": self.ref, "phase": self.phase, "ready": self.ready}
        if self.seen:
            shown["seen"] = True
        else:
            shown["dependencies"] = [node.as_json() for node in self.dependencies]
            shown["owned"] = [node.as_json() for node in self.owned]
        return shown


def split(ref: str) -> tuple[str, str]:
    kind, _, name = ref.partition("/")
    return kind, name


def dependencies(conn: Connection, kind: str, name: str) -> tuple[Link, ...]:
    return tuple(Link(need.ref, need.phase or MISSING, need.ready) for need in needs.read(conn, kind, name))


def dependents(conn: Connection, kind: str, name: str) -> tuple[Link, ...]:
    rows = conn.execute(text(_DEPENDENTS), {"kind": kind, "name": name}).all()
    return tuple(Link(f"{row.kind}/{row.name}", row.phase, row.ready) for row in rows)


def link(conn: Connection, ref: str) -> Link:
    kind, name = split(ref)
    row = conn.execute(text(_ONE), {"kind": kind, "name": name}).one()
    return Link(ref, row.phase, row.ready)


def owner(conn: Connection, table: str, name: str) -> Link | None:
    ref = conn.execute(text(f"SELECT owned_by FROM {table} WHERE name = :name"), {"name": name}).scalar()
    return link(conn, ref) if ref else None


def owned(conn: Connection, kind: str, name: str) -> tuple[Link, ...]:
    """The resources of every kind whose `owned_by` is this one, those being deleted included."""
    tables = conn.execute(text(_OWNING_TABLES)).all()
    if not tables:
        return ()
    rows = " UNION ALL ".join(
        f"SELECT '{row.kind}' AS kind, name FROM {row.plural} WHERE owned_by = :ref" for row in tables
    )
    query = f"""
SELECT o.kind, o.name, COALESCE(s.phase, 'Pending') AS phase, {_READY} AS ready
FROM ({rows}
      UNION SELECT s.kind, s.name FROM statuses AS s
      WHERE s.deleted_at IS NOT NULL AND s.last_desired ->> 'owned_by' = :ref) AS o
LEFT JOIN statuses AS s ON s.kind = o.kind AND s.name = o.name
ORDER BY o.kind, o.name
"""
    found = conn.execute(text(query), {"ref": f"{kind}/{name}"}).all()
    return tuple(Link(f"{row.kind}/{row.name}", row.phase, row.ready) for row in found)


def neighbours(conn: Connection, kind: str, table: str, name: str) -> Neighbours:
    return Neighbours(
        dependencies(conn, kind, name), dependents(conn, kind, name), owner(conn, table, name), owned(conn, kind, name)
    )


def tree(conn: Connection, kind: str, name: str, *, limit: int = MAX_TREE_NODES) -> tuple[Node, bool]:
    """The resource, what it depends on and what it owns, recursively; and whether `limit` cut the tree short.

    A resource reached twice (two resources depend on one file) is drawn in full once and marked `seen` after."""
    drawn: set[str] = set()
    cut = False

    def walk(ref: str, top: Link) -> Node:
        nonlocal cut
        if ref in drawn:
            return Node(ref, top.phase, top.ready, seen=True)
        drawn.add(ref)
        if len(drawn) > limit:
            cut = True
            return Node(ref, top.phase, top.ready)
        of_kind, of_name = split(ref)
        depends = tuple(walk(dep.ref, dep) for dep in dependencies(conn, of_kind, of_name))
        owns = tuple(walk(child.ref, child) for child in owned(conn, of_kind, of_name))
        return Node(ref, top.phase, top.ready, depends, owns)

    root = f"{kind}/{name}"
    return walk(root, link(conn, root)), cut
