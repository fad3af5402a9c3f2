"""Node liveness as the scheduler sees it: resources on a node whose worker has gone silent are reported lost."""

from __future__ import annotations

from sqlalchemy import Engine, text

_MARK = text("SELECT setpoint_mark_nodes_lost(:silent)")


def mark_lost(engine: Engine, *, silent_s: float) -> int:
    """Mark Ready=False (NodeLost) every resource whose node sent no heartbeat within `silent_s`; returns how many
    were newly marked (the database function keeps one already marked as it is, with its time)."""
    with engine.begin() as conn:
        return int(conn.execute(_MARK, {"silent": silent_s}).scalar_one())
