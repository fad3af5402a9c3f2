"""A resource's history of desired state, as the CLI and the REST API show it: who changed what, the difference
between two generations, and a rollback that writes an earlier generation's desired columns as a new generation.

The `changes` rows are written by the database (models/change.py); this module only reads them, and a rollback is
an ordinary UPDATE of the desired row, recorded like any other (history is never rewritten).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from resources.kinds import Kind, resolve
from setpoint.errors import InvalidDocument, NotFound, PreconditionFailed

SECRET = "Secret"
"""Secrets have a history too (their digests), though they are not a kind: `setpoint history secret NAME`."""
IDENTITY = frozenset({"id", "name", "uid", "node", "generation", "created_at", "updated_at"})
"""Never compared nor written back: the resource's identity, where it runs, and the database's bookkeeping."""
OPERATIONAL = frozenset({"paused", "owned_by", "deletion_policy"})
"""How the resource is operated rather than what it is: a rollback leaves these as they are now. Rolling back a
paused resource must not unpause it, nor give it back to (or take it from) an owner, nor turn an `orphan` deletion
policy back into `delete` (data would go with the row). `setpoint pause|resume` and a plain UPDATE change them."""
NOT_ROLLED_BACK = IDENTITY | OPERATIONAL
"""What a rollback leaves as it is."""
MAX_PAGE = 1000


@dataclasses.dataclass(frozen=True)
class Entry:
    """One change of one resource's desired state."""

    id: int
    at: datetime
    kind: str
    name: str
    uid: str | None
    generation: int | None
    operation: str
    changed: dict[str, Any]
    desired: dict[str, Any] | None
    db_user: str
    application_name: str | None
    client_addr: str | None
    actor: str | None
    reason: str | None

    @property
    def who(self) -> str:
        """What the database vouches for (its user, application and address), after the actor the writer named if
        it named one: any SQL session can set `setpoint.actor`, so it is never shown alone."""
        where = f"from {self.client_addr}" if self.client_addr else "on the local socket"
        if self.actor:
            return f"{self.actor} ({self.db_user} {where})"
        said = self.db_user
        if self.application_name:
            said += f" ({self.application_name})"
        return f"{said} {where}"

    def as_json(self) -> dict[str, Any]:
        shown = dataclasses.asdict(self)
        shown["at"] = self.at.isoformat()
        return shown


@dataclasses.dataclass(frozen=True)
class FieldDiff:
    field: str
    old: Any
    new: Any

    def lines(self) -> list[str]:
        """`field: old -> new`, or, for text of several lines, a unified diff."""
        if isinstance(self.old, str) and isinstance(self.new, str) and "\n" in self.old + self.new:
            diff = difflib.unified_diff(
                self.old.splitlines(), self.new.splitlines(), f"{self.field} (old)", f"{self.field} (new)", lineterm=""
            )
            return [f"{self.field}:", *(f"  {line}" for line in diff)]
        return [f"{self.field}: {json.dumps(self.old)} -> {json.dumps(self.new)}"]


@dataclasses.dataclass(frozen=True)
class Rolled:
    """What a rollback did: the generation before, the one it wrote (the same if nothing changed), the fields it
    restored, and those that differ from that generation but were left as they are (OPERATIONAL)."""

    kind: str
    name: str
    to_generation: int
    previous: int
    generation: int
    fields: tuple[str, ...]
    kept: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.generation != self.previous


def kind_name(text_: str) -> str:
    """The kind as history records it: a registered kind in any spelling, or Secret."""
    if text_.strip().lower() in ("secret", "secrets"):
        return SECRET
    return resolve(text_).name


_ENTRIES = text("""
SELECT id, at, kind, name, uid::text AS uid, generation, operation, changed, desired, db_user, application_name,
       host(client_addr) AS client_addr, actor, reason
FROM changes WHERE kind = :kind AND name = :name AND (CAST(:before AS bigint) IS NULL OR id < :before)
ORDER BY id DESC LIMIT :limit
""")


def entries(engine: Engine, kind: str, name: str, *, limit: int = 100, before: int | None = None) -> list[Entry]:
    """The changes of `kind`/`name` (every life of the name), newest first; `before` an id, to page on."""
    with engine.connect() as conn:
        rows = conn.execute(_ENTRIES, {"kind": kind, "name": name, "before": before, "limit": limit}).mappings()
        return [Entry(**row) for row in rows]


def _current(conn: Connection, kind: Kind, name: str, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(
        text(
            f"SELECT to_jsonb(t) AS desired FROM {kind.plural} AS t WHERE name = :name"
            + (" FOR UPDATE" if lock else "")
        ),
        {"name": name},
    ).scalar()
    if row is None:
        raise NotFound(f"{kind.name}/{name} not found")
    return dict(row)


_AT_GENERATION = text("""
SELECT desired FROM changes
WHERE kind = :kind AND name = :name AND uid = CAST(:uid AS uuid) AND generation = :generation
  AND operation IN ('insert', 'update')
ORDER BY id DESC LIMIT 1
""")


def _at(conn: Connection, kind: Kind, name: str, uid: str, generation: int, field: str) -> dict[str, Any]:
    found = conn.execute(
        _AT_GENERATION, {"kind": kind.name, "name": name, "uid": uid, "generation": generation}
    ).scalar()
    if found is None:
        known = conn.execute(
            text(
                "SELECT string_agg(DISTINCT generation::text, ', ') FROM changes "
                "WHERE kind = :kind AND name = :name AND uid = CAST(:uid AS uuid) AND operation <> 'delete'"
            ),
            {"kind": kind.name, "name": name, "uid": uid},
        ).scalar()
        raise InvalidDocument(
            f"{field}: {kind.name}/{name} has no generation {generation} in its history (never written, or "
            f"pruned); known generations: {known or 'none'}",
            field=field,
        )
    return dict(found)


def _spec(desired: dict[str, Any], left_out: frozenset[str] = IDENTITY) -> dict[str, Any]:
    return {key: value for key, value in desired.items() if key not in left_out}


def diff(
    engine: Engine, kind: Kind, name: str, from_generation: int, to_generation: int | None = None
) -> list[FieldDiff]:
    """Each desired field that differs between two generations of the resource (`to`: the current one)."""
    with engine.connect() as conn:
        current = _current(conn, kind, name)
        old = _at(conn, kind, name, current["uid"], from_generation, "from")
        new = (
            current
            if to_generation in (None, current["generation"])
            else _at(conn, kind, name, current["uid"], to_generation, "to")
        )
    old, new = _spec(old), _spec(new)
    return [
        FieldDiff(field, old.get(field), new.get(field))
        for field in sorted(set(old) | set(new))
        if old.get(field) != new.get(field)
    ]


def rollback(
    engine: Engine, kind: Kind, name: str, generation: int, *, if_generation: Collection[int] | None = None
) -> Rolled:
    """Write generation `generation`'s desired columns into the resource, as a new generation (nothing if they
    are already so). The change is recorded like any other, its reason saying so unless the writer gave one."""
    table = kind.model.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        current = _current(conn, kind, name, lock=True)
        if if_generation is not None and current["generation"] not in if_generation:
            raise PreconditionFailed()
        then = _at(conn, kind, name, current["uid"], generation, "generation")
        wanted = _spec(then, NOT_ROLLED_BACK)
        columns = [column for column in table.c.keys() if column in wanted]
        conn.execute(
            text(
                "SELECT set_config('setpoint.reason', COALESCE(NULLIF(current_setting('setpoint.reason', true), ''), "
                ":reason), true)"
            ),
            {"reason": f"rollback to generation {generation}"},
        )
        listed = ", ".join(f'"{column}"' for column in columns)
        try:
            written = conn.execute(
                text(
                    f"UPDATE {kind.plural} AS t SET ({listed}) = (SELECT {listed} FROM "
                    f"jsonb_populate_record(NULL::{kind.plural}, CAST(:wanted AS jsonb))) "
                    "WHERE name = :name RETURNING generation"
                ),
                {"wanted": json.dumps(wanted), "name": name},
            ).scalar_one()
        except IntegrityError as error:  # what was valid then may not be now (a cycle with a newer resource)
            said = getattr(getattr(error.orig, "diag", None), "message_primary", None) or str(error.orig)
            raise InvalidDocument(
                f"generation: {kind.name}/{name}'s generation {generation} cannot be written back now: {said}",
                field="generation",
            ) from None
    fields = tuple(sorted(c for c in columns if current.get(c) != wanted.get(c)))
    kept = tuple(sorted(c for c in OPERATIONAL if c in then and current.get(c) != then.get(c)))
    return Rolled(kind.name, name, generation, current["generation"], written, fields, kept)
