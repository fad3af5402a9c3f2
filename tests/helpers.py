"""Reading status and history the way an admin does: plain SQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def status(engine: Engine, name: str, kind: str = "File") -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT * FROM statuses WHERE kind = :kind AND name = :name"),
                {"kind": kind, "name": name},
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def view(engine: Engine, name: str, kind: str = "File") -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT * FROM resource_status WHERE kind = :kind AND name = :name"),
                {"kind": kind, "name": name},
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def runs(engine: Engine, name: str, kind: str = "File") -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text("SELECT * FROM runs WHERE kind = :kind AND name = :name ORDER BY started_at, id"),
                {"kind": kind, "name": name},
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def ready_at(engine: Engine, name: str, generation: int, kind: str = "File") -> dict[str, Any] | None:
    """The status once it shows `generation` observed and ready, else None."""
    row = status(engine, name, kind)
    if row and row["observed_generation"] == generation and row["ready"]:
        return row
    return None
