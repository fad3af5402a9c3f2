"""The SQLAlchemy engine, built from the plain postgresql:// URL in the settings."""

from __future__ import annotations

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


def make_engine(url: str, **kwargs: object) -> Engine:
    """An engine with keepalives, so a dead server or network is noticed rather than waited on forever."""
    connect_args = {
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "connect_timeout": 10,
    }
    return create_engine(driver_url(url), pool_pre_ping=True, connect_args=connect_args, **kwargs)  # type: ignore[arg-type]
