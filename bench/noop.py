"""A kind whose every reconcile is a no-op (lock and read, record and unlock), so the engine is measured alone.

Workers load it through SETPOINT_CONTROLLERS=bench.noop, the way a user's own kinds are loaded; its table is
made by `create_table`, the way a user's migration would make it.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar

from sqlalchemy import Connection, text
from sqlalchemy.schema import CreateTable
from sqlmodel import Field

from bench.resources import KIND, TABLE
from models import triggers
from models.base import Resource, common_constraints
from worker import registry
from worker.controller import Action, Controller, InvalidSpec


class BenchNoop(Resource, table=True):
    __tablename__: ClassVar[str] = TABLE  # type: ignore[misc]
    __table_args__ = common_constraints(TABLE)
    kind: ClassVar[str] = KIND

    payload: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Bumped by the benchmark to make a new generation; nothing real depends on it."""


OBSERVE_S = float(os.environ.get("BENCH_NOOP_OBSERVE_S", "0"))
"""How long observing takes (a target's answer time): 0 but in the runs that need reconciles to overlap."""


class NoopController(Controller[BenchNoop, str]):
    model = BenchNoop

    def validate(self, desired: BenchNoop) -> None:
        if desired.payload < 0:  # how the benchmark makes a resource invalid (bench/dependencies.py)
            raise InvalidSpec("payload", "must not be negative")

    def observe(self, desired: BenchNoop) -> str:
        if OBSERVE_S:
            time.sleep(OBSERVE_S)
        return "present"

    def plan(self, desired: BenchNoop, actual: str) -> list[Action]:
        return []


def create_table(conn: Connection) -> None:
    """The kind's table and the triggers that make it a kind."""
    conn.execute(CreateTable(BenchNoop.__table__))  # type: ignore[attr-defined]
    conn.execute(text(triggers.attach(TABLE, KIND)))


registry.register(NoopController())
