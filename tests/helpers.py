"""Reading status and history the way an admin does: plain SQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def unwatched(engine: Engine, statement: str, name: str, **params: Any) -> None:
    """Run `statement` on resource `name` and, in the same transaction, put its next reconcile a day away: for
    tests of the schema alone, which the session's running stack must not race (it reconciles due rows within
    milliseconds of the commit)."""
    with engine.begin() as conn:
        conn.execute(text(statement), {"n": name, **params})
        conn.execute(
            text("UPDATE statuses SET next_reconcile_at = now() + interval '1 day' WHERE name = :n"), {"n": name}
        )


def _row(engine: Engine, relation: str, name: str, kind: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        query = text(f"SELECT * FROM {relation} WHERE kind = :kind AND name = :name")
        row = conn.execute(query, {"kind": kind, "name": name}).mappings().first()
    return dict(row) if row else None


def status(engine: Engine, name: str, kind: str = "File") -> dict[str, Any] | None:
    return _row(engine, "statuses", name, kind)


def view(engine: Engine, name: str, kind: str = "File") -> dict[str, Any] | None:
    return _row(engine, "resource_status", name, kind)


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


def stack_log(stack: dict[str, str], process: str = "worker") -> str:
    """What the shared stack's `worker` or `scheduler` has logged so far (tests.conftest.stack writes the logs
    next to its state folder)."""
    return (Path(stack["SETPOINT_STATE_DIR"]).parent / f"{process}.log").read_text(errors="replace")
