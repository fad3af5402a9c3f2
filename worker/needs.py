"""What a resource waits for: its dependencies as the reconcile's first statement read them (worker/store.py),
or as `read` reads them outside a reconcile (`setpoint plan`, `describe`, the REST API) with the same SQL.

A resource acts only when every resource it depends on (its `depends_on` and the references in its templated
fields) exists, has observed its current generation and is ready, as Flux's `dependsOn`; until then it observes
and reports (phase Waiting). A resource being deleted waits, in turn, until nothing depends on it any more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, text

SELECT = """SELECT jsonb_agg(jsonb_build_object(
            'ref', d.on_kind || '/' || d.on_name,
            -- a secret has no status: it is ready once it exists (its value is never read here)
            'exists', s.kind IS NOT NULL AND s.deleted_at IS NULL OR k.name IS NOT NULL,
            'ready', COALESCE(s.ready AND s.observed_generation = s.generation AND s.deleted_at IS NULL, false)
                     OR k.name IS NOT NULL,
            'phase', CASE WHEN k.name IS NOT NULL THEN 'Set' ELSE s.phase END,
            'message', COALESCE(
                (SELECT c ->> 'message' FROM jsonb_array_elements(s.conditions) AS c WHERE c ->> 'type' = 'Ready'),
                s.last_error, ''),
            'generation', s.generation, 'observed_generation', s.observed_generation,
            'outputs', s.outputs) ORDER BY d.on_kind, d.on_name)
        FROM dependencies AS d LEFT JOIN statuses AS s ON s.kind = d.on_kind AND s.name = d.on_name
        LEFT JOIN secrets AS k ON d.on_kind = 'Secret' AND k.name = d.on_name
        WHERE d.kind = :kind AND d.name = :name"""
"""The needs of resource :kind/:name as one JSON array (or NULL): a part of the reconcile's first statement."""


@dataclasses.dataclass(frozen=True)
class Need:
    """One dependency's state: `ref` is `Kind/name`."""

    ref: str
    exists: bool
    ready: bool
    phase: str | None
    message: str
    outputs: dict[str, Any]
    generation: int | None = None
    observed_generation: int | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Need:
        return cls(
            row["ref"],
            bool(row.get("exists")),
            bool(row.get("ready")),
            row.get("phase"),
            row.get("message") or "",
            row.get("outputs") or {},
            row.get("generation"),
            row.get("observed_generation"),
        )

    def why_not(self) -> str:
        """Why it is not ready, as status says it: `File/app-conf: Invalid: path must be absolute`."""
        if not self.exists:
            return f"{self.ref}: being deleted" if self.phase == "Deleting" else f"{self.ref}: does not exist"
        if self.observed_generation != self.generation:
            return f"{self.ref}: {self.phase}: generation {self.generation} not yet observed"
        return f"{self.ref}: {self.phase}: {self.message}".rstrip(": ")


DEPENDENCY_HOLDS = ("DependencyNotReady", "DependencyMissing")
"""The holds that end when the dependencies turn ready (worker/store.py makes such a resource due again at once
if they already have by the time its reconcile is recorded)."""


@dataclasses.dataclass(frozen=True)
class Hold:
    """Why a resource does not act now: a condition's reason and message."""

    reason: str
    message: str


def of(rows: Iterable[dict[str, Any]]) -> tuple[Need, ...]:
    return tuple(Need.of(row) for row in rows)


def read(conn: Connection, kind: str, name: str) -> tuple[Need, ...]:
    """The needs of `kind`/`name` now, as a reconcile starting now would read them (without locking anything)."""
    return of(conn.execute(text(SELECT), {"kind": kind, "name": name}).scalar() or [])


def hold(needs: tuple[Need, ...], unresolved: tuple[str, ...] = ()) -> Hold | None:
    """Whether to hold back, and why, naming each dependency that is not ready and each reference not resolved."""
    waiting = [need for need in needs if not need.ready]
    if waiting:
        missing = all(not need.exists and need.phase != "Deleting" for need in waiting)
        reason = "DependencyMissing" if missing else "DependencyNotReady"
        return Hold(reason, "waiting for " + "; ".join(need.why_not() for need in waiting))
    if unresolved:
        return Hold("ReferenceUnresolved", "cannot resolve " + "; ".join(unresolved))
    return None


def dependents_hold(dependents: list[str], owner: str | None = None) -> Hold | None:
    """A resource being deleted waits for the resources that depend on it to be gone first, but for its owner,
    which waits for it (foreground deletion): an App that depends on one of its own config files would
    otherwise wait for ever."""
    dependents = [ref for ref in dependents if ref != owner]
    if not dependents:
        return None
    return Hold("DependentsExist", "waiting for dependents to be deleted first: " + ", ".join(dependents))
