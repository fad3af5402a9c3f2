"""The worker's second engine, for what a controller reads or writes beyond its own reconcile's two statements:
rows it owns (worker/owned.py) and secrets (worker/secrets.py). Made in the process that uses it, never shared
across Celery's fork."""

from __future__ import annotations

import os

from sqlalchemy import Engine

from models.database import make_engine
from setpoint import settings as config

_engine: tuple[int, Engine] | None = None


def engine() -> Engine:
    global _engine
    if _engine is None or _engine[0] != os.getpid():
        _engine = (os.getpid(), make_engine(config.get().database_url, pool_size=1, max_overflow=2))
    return _engine[1]
