"""What the console's pages show, read in a few queries each: the fleet a page at a time with its counts by phase,
the chart of resources not ready over the last hour, and one resource with its runs, events and changes.

Everything comes from the tables the CLI and the REST API read (through resources/ where they already have it);
nothing here writes. Desired rows hold the names of secrets, never their values, and workers scrub secrets from
status, runs and events, so nothing read here holds a secret value.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text

from models.status import PHASES
from resources import documents, history
from resources.kinds import Kind, all_kinds

PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
CHART_MINUTES = 60
MAX_CHART_EVENTS = 20_000
"""The chart reads at most this many events of the last hour (beyond it, it says it is partial)."""
READY_TYPES = frozenset({"Ready", "DriftCorrected"})
NOT_READY_TYPES = frozenset({"NotReady", "Failed", "Invalid", "Waiting", "NodeLost", "Drifted"})
"""Event types that say a resource is (or is no longer) ready; `Recovered` says neither."""


@dataclasses.dataclass(frozen=True)
class Filters:
    kind: str | None = None
    phase: str | None = None
    label: str | None = None
    """`key=value`, or `key` for any value."""
    name: str | None = None
    """Part of the name."""

    def query(self, **more: Any) -> dict[str, Any]:
        said = {k: v for k, v in dataclasses.asdict(self).items() if v}
        return {**said, **{k: v for k, v in more.items() if v not in (None, "")}}


@dataclasses.dataclass(frozen=True)
class Row:
    kind: str
    name: str
    phase: str
    ready: bool
    generation: int
    observed_generation: int | None
    last_reconcile_at: datetime | None
    message: str
    paused: bool
    deleting: bool


@dataclasses.dataclass(frozen=True)
class Fleet:
    rows: list[Row]
    counts: dict[str, int]
    """Resources by phase, with the kind, label and name filters (not the phase's), every phase listed."""
    total: int
    """Resources matching every filter."""
    page: int
    pages: int
    page_size: int


def _union(kinds: list[Kind]) -> str:
    parts = [
        f"SELECT '{kind.name}' AS kind, name, uid, generation, labels, paused, false AS deleting FROM {kind.plural}"
        for kind in kinds
    ]
    # Resources being torn down: their desired row is gone, their status (with the last desired row) stays.
    parts.append(
        "SELECT kind, name, uid, generation, COALESCE(last_desired -> 'labels', '{}'::jsonb), "
        "COALESCE((last_desired ->> 'paused')::boolean, false), true FROM statuses WHERE deleted_at IS NOT NULL"
        + " AND kind IN :kinds"
    )
    return " UNION ALL ".join(parts)


_ROW = """
d.kind, d.name, COALESCE(d.phase, 'Pending') AS phase,
COALESCE(d.ready AND d.observed_generation = d.generation, false) AS ready,
d.generation, d.observed_generation, d.last_reconcile_at, d.paused, d.deleting,
CASE WHEN d.observed_generation IS DISTINCT FROM d.generation AND NOT d.deleting
          AND (COALESCE(d.ready, false) OR COALESCE(said.message, '') = '')
     THEN format('generation %s not yet observed', d.generation)
          || COALESCE(' (observed ' || d.observed_generation || ')', '')
     ELSE COALESCE(said.message, '') END AS message
"""
"""A row of the page (desired and status columns side by side in `d`), as documents.view says it."""

_SAID = """LEFT JOIN LATERAL (SELECT COALESCE(
    (SELECT c ->> 'message' FROM jsonb_array_elements(d.conditions) AS c WHERE c ->> 'type' = 'Ready'),
    d.last_error, '') AS message) AS said ON true"""


def _where(filters: Filters, *, phase: bool) -> tuple[str, dict[str, Any]]:
    clauses, params = ["TRUE"], {}
    if phase and filters.phase:
        clauses.append("COALESCE(s.phase, 'Pending') = :phase")
        params["phase"] = filters.phase
    if filters.name:
        clauses.append("strpos(d.name, :name) > 0")
        params["name"] = filters.name
    if filters.label:
        key, has_value, value = filters.label.partition("=")
        if has_value:
            clauses.append("d.labels ->> CAST(:label_key AS text) = CAST(:label_value AS text)")  # 3 matches "3"
            params["label_value"] = value.strip()
        else:
            clauses.append("d.labels ? CAST(:label_key AS text)")
        params["label_key"] = key.strip()
    return " AND ".join(clauses), params


def present(conn: Connection) -> list[Kind]:
    """The registered kinds whose tables this database has (a kind registered in this process may have none)."""
    there = set(conn.execute(text("SELECT kind FROM setpoint_kinds()")).scalars())
    return [kind for kind in all_kinds().values() if kind.name in there]


def kinds_of(conn: Connection, filters: Filters) -> list[Kind]:
    every = present(conn)
    return [k for k in every if k.name == filters.kind] if filters.kind else every


def fleet(engine: Engine, filters: Filters, page: int = 1, page_size: int = PAGE_SIZE) -> Fleet:
    """One page of the fleet, ordered by kind then name, and the counts by phase."""
    counted_where, counted_params = _where(filters, phase=False)
    where, params = _where(filters, phase=True)
    with engine.connect() as conn:
        kinds = kinds_of(conn, filters)
        names = [k.name for k in kinds]
        source = (
            f"FROM ({_union(kinds)}) AS d "
            "LEFT JOIN statuses AS s ON s.kind = d.kind AND s.name = d.name AND s.uid = d.uid"
        )
        counts = dict.fromkeys(PHASES, 0)
        counting = text(
            f"SELECT COALESCE(s.phase, 'Pending') AS phase, count(*) {source} WHERE {counted_where} GROUP BY 1"
        )
        for row in conn.execute(_with_kinds(counting), {**counted_params, "kinds": names}):
            counts[row[0]] = row[1]
        total = counts.get(filters.phase, 0) if filters.phase else sum(counts.values())
        pages = max(1, -(-total // page_size))
        page = min(max(1, page), pages)
        listing = text(
            f"SELECT {_ROW} FROM (SELECT d.kind, d.name, d.generation, d.paused, d.deleting, s.phase, s.ready, "
            "s.observed_generation, s.last_reconcile_at, s.conditions, s.last_error "
            f"{source} WHERE {where} ORDER BY d.kind, d.name LIMIT :limit OFFSET :offset) AS d "
            f"{_SAID} ORDER BY d.kind, d.name"
        )
        rows = conn.execute(
            _with_kinds(listing),
            {**params, "kinds": names, "limit": page_size, "offset": (page - 1) * page_size},
        ).mappings()
        found = [Row(**row) for row in rows]
    return Fleet(found, counts, total, page, pages, page_size)


def _with_kinds(statement: Any) -> Any:
    return statement.bindparams(bindparam("kinds", expanding=True))


@dataclasses.dataclass(frozen=True)
class Chart:
    points: list[tuple[datetime, int]]
    """Resources not ready at the end of each minute of the last hour, oldest first."""
    partial: bool
    """The hour held more events than the chart reads."""

    @property
    def peak(self) -> int:
        return max((count for _, count in self.points), default=0)


_NOT_READY_NOW = text("""
SELECT count(*) FROM statuses
WHERE deleted_at IS NULL AND NOT (ready AND observed_generation IS NOT DISTINCT FROM generation)
""")
_HOUR_EVENTS = text(
    "SELECT kind, name, at, type FROM events WHERE at >= :start AND type IN :types ORDER BY id LIMIT :n"
)
_BEFORE = text("""
SELECT DISTINCT ON (e.kind, e.name) e.kind, e.name, e.type
FROM events AS e JOIN unnest(CAST(:kinds AS text[]), CAST(:names AS text[])) AS r(kind, name)
     ON e.kind = r.kind AND e.name = r.name
WHERE e.at < :start AND e.type IN :types ORDER BY e.kind, e.name, e.id DESC
""")


def not_ready_now(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(_NOT_READY_NOW).scalar_one())


def _state(event_type: str) -> int:
    """1 not ready, 0 ready or gone."""
    return 1 if event_type in NOT_READY_TYPES else 0


def not_ready_chart(engine: Engine, now: datetime, minutes: int = CHART_MINUTES) -> Chart:
    """Resources not ready, minute by minute over the last hour, derived from the events table: today's count, and
    going back, each resource's readiness as its last event before that minute said (Ready, DriftCorrected: ready;
    NotReady, Failed, Invalid, Waiting, NodeLost, Drifted: not; Deleted: gone). Before its first event of the hour
    a resource is as its last earlier event said; with none, it is not counted (it was most likely not there yet: a
    new resource's short wait for its first Ready is left out). Resources without events this hour count as now, those
    made this hour from when they were made."""
    start = now - timedelta(minutes=minutes)
    types = sorted(READY_TYPES | NOT_READY_TYPES | {"Deleted"})
    with engine.connect() as conn:
        current = conn.execute(_NOT_READY_NOW).scalar_one()
        found = conn.execute(
            _HOUR_EVENTS.bindparams(bindparam("types", expanding=True)),
            {"start": start, "types": types, "n": MAX_CHART_EVENTS + 1},
        ).all()
        partial = len(found) > MAX_CHART_EVENTS
        timelines: dict[tuple[str, str], list[tuple[datetime, int]]] = {}
        for row in found[:MAX_CHART_EVENTS]:
            timelines.setdefault((row.kind, row.name), []).append((row.at, _state(row.type)))
        before = _before(conn, list(timelines), start, types)
        born = _born_not_ready(conn, start)
    # A sweep over every change of state in time order: O(events + minutes), whatever the fleet's size.
    then = current
    changes: list[tuple[datetime, int]] = []
    for key, steps in timelines.items():
        state = before.get(key, 0)
        for when, said in steps:
            if said != state:
                changes.append((when, said - state))
                state = said
        then -= state - before.get(key, 0)  # back to what it was at the start of the window
    for key, created_at in born.items():  # not ready since it was made this hour, with no event yet: from then on
        if key not in timelines:
            then -= 1
            changes.append((created_at, 1))
    changes.sort(key=lambda change: change[0])
    points = []
    at_change = 0
    for minute in range(minutes + 1):
        at = start + timedelta(minutes=minute)
        while at_change < len(changes) and changes[at_change][0] <= at:
            then += changes[at_change][1]
            at_change += 1
        points.append((at, max(0, then)))
    points[-1] = (now, current)
    return Chart(points, partial)


def _born_not_ready(conn: Connection, start: datetime) -> dict[tuple[str, str], datetime]:
    """The resources made since `start` that are not ready now, with when they were made."""
    kinds = present(conn)
    if not kinds:
        return {}
    made = " UNION ALL ".join(
        f"SELECT '{kind.name}' AS kind, name, uid, created_at FROM {kind.plural} WHERE created_at >= :start"
        for kind in kinds
    )
    rows = conn.execute(
        text(
            f"SELECT d.kind, d.name, d.created_at FROM ({made}) AS d JOIN statuses AS s "
            "ON s.kind = d.kind AND s.name = d.name AND s.uid = d.uid "
            "WHERE NOT (s.ready AND s.observed_generation IS NOT DISTINCT FROM s.generation)"
        ),
        {"start": start},
    ).all()
    return {(row.kind, row.name): row.created_at for row in rows}


def _before(conn: Connection, keys: list[tuple[str, str]], start: datetime, types: list[str]) -> dict[Any, int]:
    if not keys:
        return {}
    rows = conn.execute(
        _BEFORE.bindparams(bindparam("types", expanding=True)),
        {"kinds": [k for k, _ in keys], "names": [n for _, n in keys], "start": start, "types": types},
    ).all()
    return {(row.kind, row.name): _state(row.type) for row in rows}


_EVENTS = text("""
SELECT id, at, type, reason, message, details, generation FROM events
WHERE kind = :kind AND name = :name ORDER BY id DESC LIMIT :limit
""")


@dataclasses.dataclass(frozen=True)
class Resource:
    document: dict[str, Any]
    """{kind, name, uid, spec, status}, as the REST API answers it (with dependencies, owner and owned)."""
    runs: list[dict[str, Any]]
    events: list[dict[str, Any]]
    changes: list[history.Entry]


def resource(engine: Engine, kind: Kind, name: str, *, runs: int = 50, events: int = 30) -> Resource:
    """One resource as its page shows it; NotFound if it has no row."""
    document = documents.get(engine, kind, name)
    with engine.connect() as conn:
        found = conn.execute(_EVENTS, {"kind": kind.name, "name": name, "limit": events}).mappings().all()
    return Resource(
        document,
        documents.runs(engine, kind, name, limit=runs, uid=document["uid"]),
        [dict(row) for row in found],
        history.entries(engine, kind.name, name, limit=20),
    )
