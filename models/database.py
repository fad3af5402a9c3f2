"""The SQLAlchemy engine, built from the plain postgresql:// URL in the settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url


def driver_url(url: str) -> str:
    """The URL SQLAlchemy needs: users write postgresql://, we speak psycopg 3."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"SETPOINT_DATABASE_URL must be a postgresql:// URL, got {parsed.drivername}://")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The URL psycopg itself takes (no +driver suffix), for LISTEN and lock connections."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10,
    # Our side notices a dead server or network within about 25 s…
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    # …and the server notices a dead client as fast, ending its session and freeing its advisory locks
    # (the scheduler's leadership, a reconcile's resource lock) instead of holding them for hours.
    "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
}
"""libpq settings for every connection Setpoint opens, pooled or dedicated."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A pooled engine that checks a connection before lending it, so a restarted server costs no failure.

    A hot path that handles a dead connection itself passes `pool_pre_ping=False` and saves a round trip."""
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(driver_url(url), connect_args=CONNECT_ARGS, **kwargs)
