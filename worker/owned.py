"""What a controller owns: rows of other kinds it creates, keeps as it wants them and deletes, as ordinary actions.

A composite kind (App: a Workload and its config Files) declares its parts in `plan` as `ApplyOwned` and
`DeleteOwned` values, and reads them in `observe` with `owned_rows`. The rows carry `owned_by = 'App/web'`: the
database deletes them with their owner, or leaves them (orphaned) if the owner's deletion_policy is 'orphan', and
wakes the owner when anyone else edits them, so the owner's next reconcile puts them back (models/ownership.py).
A row owned by another resource, or by nobody (an admin's), is never taken over: row-level security refuses the
worker's role every write to an unowned row, and `ApplyOwned` says whose the row is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError

from models import change
from setpoint.errors import PermanentError, TransientError
from worker import needs, registry
from worker.controller import Action
from worker.side_engine import engine


class OwnedElsewhere(PermanentError):
    """The row exists and is not this owner's: a controller never takes over another's row, nor an admin's."""


@dataclasses.dataclass(frozen=True)
class Owned:
    """One owned resource: its desired row as stored, and its status as the owner reports it."""

    kind: str
    name: str
    desired: dict[str, Any]
    phase: str | None
    ready: bool
    message: str

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


_OWNED = text("""
SELECT o.kind, o.name, o.desired, s.phase,
       COALESCE(s.ready AND s.observed_generation = s.generation AND s.deleted_at IS NULL, false) AS ready,
       COALESCE((SELECT c ->> 'message' FROM jsonb_array_elements(s.conditions) AS c WHERE c ->> 'type' = 'Ready'),
                s.last_error, '') AS message
FROM setpoint_owned(:owner) AS o LEFT JOIN statuses AS s ON s.kind = o.kind AND s.name = o.name
ORDER BY o.kind, o.name
""")


def owned_rows(owner: str) -> dict[str, Owned]:
    """Every row `owner` (Kind/name) owns, in every kind's table, by `Kind/name`."""
    with engine().connect() as conn:
        rows = conn.execute(_OWNED, {"owner": owner}).mappings().all()
    found = (Owned(r["kind"], r["name"], r["desired"], r["phase"], bool(r["ready"]), r["message"]) for r in rows)
    return {owned.ref: owned for owned in found}


def differs(spec: dict[str, Any], row: dict[str, Any] | None) -> bool:
    """Whether the row (as `owned_rows` read it) lacks what `spec` says: the fields it does not name are left."""
    return row is None or any(row.get(field) != value for field, value in spec.items())


def _table(kind: str) -> Any:
    return registry.get(kind).model.__table__  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class ApplyOwned(Action):
    """Create the row `kind`/`name` owned by `owner`, or set the fields of `spec` in the row it owns already."""

    kind: str
    name: str
    spec: dict[str, Any]
    owner: str

    def run(self) -> None:
        table = _table(self.kind)
        values = insert(table).values(name=self.name, owned_by=self.owner, **self.spec)
        statement = values.on_conflict_do_update(
            index_elements=["name"],
            set_={field: values.excluded[field] for field in self.spec},
            where=table.c.owned_by == self.owner,
        ).returning(table.c.name)
        try:
            with engine().begin() as conn:
                change.stamp(conn, f"setpoint:{self.owner}")
                if conn.execute(statement).first() is not None:
                    return
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) != "42501":  # not row-level security: the row's own fault
                _refused(self.kind, self.name, error)
        with engine().connect() as conn:
            holder = conn.execute(select(table.c.owned_by).where(table.c.name == self.name)).scalar()
        whose = f"owned by {holder}" if holder else "owned by nobody (an admin's)"
        raise OwnedElsewhere(
            f"{self.kind}/{self.name} exists and is {whose}, not {self.owner}: rename one of them, or set its "
            f"owned_by to {self.owner!r} to hand it over"
        )

    def __str__(self) -> str:
        return f"apply {self.kind}/{self.name} ({', '.join(sorted(self.spec))})"


def _refused(kind: str, name: str, error: DBAPIError) -> None:
    message = str(getattr(error.orig, "diag", None) and error.orig.diag.message_primary or error.orig)  # type: ignore[union-attr]
    if "still being deleted" in message:
        raise TransientError(f"{kind}/{name}: {message}") from error
    raise PermanentError(f"{kind}/{name} refused: {message}") from error


@dataclasses.dataclass(frozen=True)
class DeleteOwned(Action):
    """Delete the row `kind`/`name` if `owner` owns it (anyone else's row stays)."""

    kind: str
    name: str
    owner: str

    def run(self) -> None:
        table = _table(self.kind)
        with engine().begin() as conn:
            change.stamp(conn, f"setpoint:{self.owner}")
            conn.execute(delete(table).where(table.c.name == self.name, table.c.owned_by == self.owner))

    def __str__(self) -> str:
        return f"delete {self.kind}/{self.name}"


def teardown_hold(left: list[str]) -> needs.Hold | None:
    """An owner being deleted waits until what it owns is torn down (foreground deletion, as in Kubernetes)."""
    if not left:
        return None
    return needs.Hold("OwnedExist", "waiting for owned resources to be deleted first: " + ", ".join(left))
