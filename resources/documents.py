"""Desired state read and written as documents `{kind, name, uid, spec}`, with the status workers report.

Writes go to the kinds' tables, so the database's triggers bump generations and wake the scheduler
exactly as for an admin's SQL; a write that changes nothing leaves the generation alone.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from models.base import NAME_PATTERN
from models.links import REFERENCE
from resources import graph
from resources.kinds import Kind, resolve
from resources.manifest import Document
from setpoint.errors import AlreadyExists, InvalidDocument, NotFound, PreconditionFailed, UnknownKind

HIDDEN_STATUS = ("kind", "name", "uid", "claim", "enqueued_at", "picked_at", "last_desired", "node")
"""Scheduling bookkeeping that says nothing to an operator."""


@dataclasses.dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    action: str
    """`created`, `configured` (its generation moved) or `unchanged`."""
    generation: int


def check(document: Document) -> tuple[Kind, dict[str, Any]]:
    """The document's kind and its validated spec, or InvalidDocument naming the document and the field."""
    try:
        kind = resolve(document.kind)
    except UnknownKind as error:
        raise InvalidDocument(f"{document.label}: field 'kind': {error}", field="kind") from None
    if not re.match(NAME_PATTERN, document.name):
        raise InvalidDocument(
            f"{document.label}: field 'name': expected lower-case letters, digits, '-', '_' or '.', "
            f"starting and ending with a letter or digit, at most 253 characters; got {document.name!r}",
            field="name",
        )
    try:
        spec = kind.spec.model_validate(document.spec).model_dump()
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(["spec", *(str(part) for part in first["loc"])])
        wanted = expected(kind, field.removeprefix("spec."))
        said = f"expected {wanted} ({first['msg']})" if wanted else first["msg"]
        raise InvalidDocument(f"{document.label}: field '{field}': {said}", field=field) from None
    return kind, spec


def apply(engine: Engine, documents: list[Document]) -> list[Applied]:
    """Create or update every document in one transaction: one invalid document and nothing is applied."""
    checked = [(document, *check(document)) for document in documents]
    first: dict[tuple[str, str], Document] = {}
    for document, kind, _ in checked:
        earlier = first.setdefault((kind.name, document.name), document)
        if earlier is not document:  # which one would win is not for the order of files to decide
            raise InvalidDocument(
                f"{kind.name.lower()}/{document.name} is declared twice: in {earlier.source} and in {document.source}",
                field="name",
            )
    applied = []
    with engine.begin() as conn:
        for document, kind, spec in checked:
            applied.append(_upsert(conn, document, kind, spec, documents))
    return applied


def _upsert(
    conn: Connection, document: Document, kind: Kind, spec: dict[str, Any], batch: Sequence[Document] = ()
) -> Applied:
    table = kind.model.__table__  # type: ignore[attr-defined]
    before = conn.execute(
        text(f"SELECT generation FROM {kind.plural} WHERE name = :name"), {"name": document.name}
    ).scalar_one_or_none()
    statement = (
        insert(table)
        .values(name=document.name, **spec)
        .on_conflict_do_update(index_elements=["name"], set_=spec)
        .returning(table.c.generation)
    )
    with conn.begin_nested():
        try:
            generation = conn.execute(statement).scalar_one()
        except (IntegrityError, DBAPIError) as error:
            raise _invalid(document, kind, error, batch) from None
    action = "created" if before is None else ("configured" if generation != before else "unchanged")
    return Applied(kind.name, document.name, action, generation)


def expected(kind: Kind, field: str) -> str | None:
    """What the database's CHECK constraint on `field` expects, in words (models.base.check)."""
    prefix = f"ck_{kind.plural}_{field}_"
    for constraint in sorted(kind.model.__table__.constraints, key=lambda c: str(c.name)):  # type: ignore[attr-defined]
        if (
            str(constraint.name).startswith(prefix)
            and constraint.info.get("expected")
            and not constraint.info.get("limit")
        ):
            return str(constraint.info["expected"])
    return None


def _invalid(document: Document, kind: Kind, error: DBAPIError, batch: Sequence[Document] = ()) -> InvalidDocument:
    """The database refused the row: name the field its constraint guards, and say what it said."""
    diag = getattr(error.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or ""
    detail = getattr(diag, "message_primary", None) or str(error.orig).splitlines()[0]
    prefix = f"ck_{kind.plural}_"
    fields = sorted(["name", *kind.spec_fields], key=len, reverse=True)
    field = next((f for f in fields if constraint.removeprefix(prefix).startswith(f)), None)
    if getattr(error.orig, "sqlstate", None) == "23505":  # taken: a unique column, or a name still deleting
        field = unique_field(kind, constraint)
    if constraint == f"{prefix}depends_on_cycle":
        field, detail = _cycle(document, kind, detail, getattr(diag, "message_hint", None), batch)
    where = f"field 'spec.{field}'" if field and field != "name" else f"field '{field or 'spec'}'"
    located = f"spec.{field}" if field and field != "name" else (field or "spec")
    rule = next((c for c in kind.model.__table__.constraints if c.name == constraint), None)  # type: ignore[attr-defined]
    if rule is not None and rule.info.get("expected"):
        detail = f"expected {rule.info['expected']} (constraint {constraint})"
    return InvalidDocument(f"{document.label}: {where}: {detail}", field=located)


def _canonical(ref: str) -> str:
    """`file/app-conf` as `File/app-conf`, as the database stores it; as written if the kind is unknown."""
    spelled, _, name = ref.partition("/")
    try:
        return f"{resolve(spelled).name}/{name}"
    except UnknownKind:
        return ref


def _cycle(document: Document, kind: Kind, detail: str, hint: str | None, batch: Sequence[Document]) -> tuple[str, str]:
    """The field that closed a cycle (`depends_on`, or the templated field whose reference implies the edge) and
    the database's words, with where each other resource of the cycle is declared in the same apply."""
    path = detail.removeprefix("cycle: ").split(" -> ")
    field = "depends_on"
    if len(path) > 1:
        after = path[1]
        if after not in {_canonical(ref) for ref in document.spec.get("depends_on") or [] if isinstance(ref, str)}:
            for name in kind.model.templated:
                found = {_canonical(m.group(1)) for m in re.finditer(REFERENCE, str(document.spec.get(name)))}
                if after in found:
                    field = name
                    break
    me = f"{kind.name}/{document.name}"
    declared = []
    for other in batch:
        ref = _canonical(f"{other.kind}/{other.name}")
        if ref in path and ref != me:
            declared.append(f"{ref} is declared in {other.source}")
    said = "; ".join([detail, *declared])
    return field, f"{said}. {hint}" if hint else said


def unique_field(kind: Kind, constraint: str) -> str:
    """The column a unique constraint guards: the name's unless the constraint is another column's."""
    for rule in kind.model.__table__.constraints:  # type: ignore[attr-defined]
        if rule.name == constraint and isinstance(rule, UniqueConstraint) and len(rule.columns) == 1:
            return str(next(iter(rule.columns)).name)
    return "name"


def create(engine: Engine, kind: Kind, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Create a resource; AlreadyExists if the name is taken."""
    document = Document(kind.name, name, spec, "request body")
    checked_kind, checked = check(document)
    table = kind.model.__table__  # type: ignore[attr-defined]
    try:  # a plain INSERT: of two requests for one name, the database lets exactly one through
        with engine.begin() as conn:
            conn.execute(insert(table).values(name=name, **checked))
            # Read back before COMMIT: a row that cannot be shown is not stored either.
            return _get(conn, kind, name)
    except IntegrityError as error:
        constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None) or ""
        if getattr(error.orig, "sqlstate", None) == "23505" and unique_field(checked_kind, constraint) == "name":
            raise AlreadyExists(
                f"{kind.name} {name!r} already exists{' (still being deleted)' if 'deleted' in str(error.orig) else ''}"
            ) from None
        raise _invalid(document, checked_kind, error) from None
    except DBAPIError as error:
        raise _invalid(document, checked_kind, error) from None


def replace(
    engine: Engine,
    kind: Kind,
    name: str,
    spec: dict[str, Any],
    *,
    partial: bool = False,
    if_generation: Collection[int] | None = None,
) -> dict[str, Any]:
    """Replace a resource's spec (fields left out take their defaults), or with `partial` merge into it.

    Read, merge and write in one transaction holding the row's lock, so two concurrent patches of different
    fields both land. With `if_generation`, PreconditionFailed unless the stored generation is one of them
    (optimistic concurrency: If-Match).
    """
    with engine.begin() as conn:
        desired = conn.execute(
            text(f"SELECT to_jsonb(d) FROM {kind.plural} AS d WHERE name = :name FOR UPDATE"), {"name": name}
        ).scalar_one_or_none()
        if desired is None:
            raise NotFound(f"{kind.name} {name!r} not found")
        _require(kind, name, desired["generation"], if_generation)
        current = {field: desired.get(field) for field in kind.spec_fields}
        document = Document(kind.name, name, {**current, **spec} if partial else spec, "request body")
        _upsert(conn, document, *check(document))
        return _get(conn, kind, name)


def delete(engine: Engine, kind: Kind, name: str, *, if_generation: Collection[int] | None = None) -> None:
    """Delete a resource; with `if_generation`, PreconditionFailed unless it is at one of those generations."""
    with engine.begin() as conn:
        generation = conn.execute(
            text(f"DELETE FROM {kind.plural} WHERE name = :n RETURNING generation"), {"n": name}
        ).scalar_one_or_none()
        if generation is None:
            raise NotFound(f"{kind.name} {name!r} not found")
        _require(kind, name, generation, if_generation)  # raising rolls the DELETE back


def _require(kind: Kind, name: str, generation: int, if_generation: Collection[int] | None) -> None:
    if if_generation is not None and generation not in if_generation:
        raise PreconditionFailed(
            f"{kind.name} {name!r} is at generation {generation}, not "
            f"{' or '.join(str(g) for g in sorted(if_generation)) or 'the one given'}: read it again and retry"
        )


def _select(kind: Kind, where: str = "") -> str:
    return (
        f"SELECT to_jsonb(d) AS desired, to_jsonb(s) AS status FROM {kind.plural} AS d "
        f"LEFT JOIN statuses AS s ON s.kind = :kind AND s.name = d.name AND s.uid = d.uid {where}"
    )


def view(kind: Kind, desired: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    """`{kind, name, uid, spec, status}`: the same shape from the CLI and the API.

    A generation no reconcile has observed yet is not ready, whatever the last reconcile found, as in
    resource_status; its message says so unless it is a failure's."""
    shown = {k: v for k, v in (status or {}).items() if k not in HIDDEN_STATUS}
    shown["generation"] = desired["generation"]
    ready = next((c for c in shown.get("conditions") or [] if c.get("type") == "Ready"), None)
    shown["message"] = (ready or {}).get("message") or shown.get("last_error") or ""
    shown.setdefault("phase", "Pending")
    shown.setdefault("ready", False)
    shown["outputs"] = shown.get("outputs") or {}
    observed = shown.get("observed_generation")
    if observed != desired["generation"]:
        if shown["ready"] or not shown["message"]:  # a failure's own message says more than this
            shown["message"] = f"generation {desired['generation']} not yet observed" + (
                f" (observed {observed})" if observed is not None else ""
            )
        shown["ready"] = False
    spec = {field: desired.get(field) for field in kind.spec_fields}
    return {"kind": kind.name, "name": desired["name"], "uid": desired["uid"], "spec": spec, "status": shown}


def get(engine: Engine, kind: Kind, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return _get(conn, kind, name)


def _get(conn: Connection, kind: Kind, name: str) -> dict[str, Any]:
    """One resource, its status with how it stands among the others (resources/graph.py)."""
    row = conn.execute(text(_select(kind, "WHERE d.name = :name")), {"kind": kind.name, "name": name}).first()
    if row is None:
        raise NotFound(f"{kind.name} {name!r} not found")
    shown = view(kind, row.desired, row.status)
    shown["status"].update(graph.neighbours(conn, kind.name, kind.plural, name).as_json())
    return shown


def listing(
    engine: Engine,
    kind: Kind,
    *,
    limit: int = 100,
    offset: int = 0,
    phase: str | None = None,
    ready: bool | None = None,
    prefix: str | None = None,
) -> list[dict[str, Any]]:
    """Resources of a kind by name, filtered by phase, readiness or name prefix, a page at a time."""
    where = ["TRUE"]
    params: dict[str, Any] = {"kind": kind.name, "limit": limit, "offset": offset}
    if phase is not None:
        where.append("COALESCE(s.phase, 'Pending') = :phase")
        params["phase"] = phase
    if ready is not None:
        where.append("COALESCE(s.ready, false) = :ready")
        params["ready"] = ready
    if prefix:
        where.append("starts_with(d.name, :prefix)")
        params["prefix"] = prefix
    query = _select(kind, "WHERE " + " AND ".join(where) + " ORDER BY d.name LIMIT :limit OFFSET :offset")
    with engine.connect() as conn:
        rows = conn.execute(text(query), params).all()
    return [view(kind, row.desired, row.status) for row in rows]


_RUNS = """
SELECT started_at, generation, outcome, actions, error, worker, duration_ms, task_id FROM runs
WHERE kind = :kind AND name = :name AND uid = COALESCE(
    CAST(:uid AS uuid),
    (SELECT uid FROM {table} WHERE name = :name),
    (SELECT uid FROM statuses WHERE kind = :kind AND name = :name))  -- a tombstone's, while it is torn down
ORDER BY started_at DESC, id DESC LIMIT :limit
"""


def runs(engine: Engine, kind: Kind, name: str, limit: int = 10, uid: str | None = None) -> list[dict[str, Any]]:
    """The latest reconcile attempts of a resource, newest first: of the one with `uid`, by default of the one
    that has the name now (never an earlier, deleted resource that had the same name)."""
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text(_RUNS.format(table=kind.plural)),
                {"kind": kind.name, "name": name, "limit": limit, "uid": uid},
            )
            .mappings()
            .all()
        )
    return [dict(row) for row in rows]


def set_paused(engine: Engine, kind: Kind, name: str, paused: bool) -> None:
    with engine.begin() as conn:
        found = conn.execute(
            text(f"UPDATE {kind.plural} SET paused = :paused WHERE name = :n"), {"paused": paused, "n": name}
        ).rowcount
    if not found:
        raise NotFound(f"{kind.name} {name!r} not found")


def reconcile_now(engine: Engine, kind: Kind, name: str) -> None:
    """Make the resource due now: the scheduler enqueues it within a tick (never twice). Recorded in its history
    (operation `reconcile`) with the transaction's actor and reason, as a change of its desired state would be."""
    with engine.begin() as conn:
        found = conn.execute(
            text("SELECT setpoint_reconcile_now(:kind, :n)"), {"kind": kind.name, "n": name}
        ).scalar_one()
    if not found:
        raise NotFound(f"{kind.name} {name!r} not found")
