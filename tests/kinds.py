"""A kind that exists only for the tests: it fails a set number of times, then succeeds.

The worker imports this module through SETPOINT_CONTROLLERS, exactly as a user's own kinds are loaded;
its table is created by the test fixtures (tests.conftest.create_test_kinds), not by the migrations.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import ClassVar

from sqlmodel import Field

from models.base import Resource, common_constraints
from worker import registry
from worker.controller import Action, Controller, TransientError


class Flaky(Resource, table=True):
    __tablename__: ClassVar[str] = "flakies"  # type: ignore[misc]
    __table_args__ = common_constraints("flakies")
    kind: ClassVar[str] = "Flaky"

    counter_path: str
    """A file counting the attempts made so far."""
    fail_times: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """How many attempts fail before one succeeds; -1 fails for ever."""
    hang_seconds: float = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """How long each attempt sleeps first (to exercise time limits)."""
    teardown_fails: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    """Whether removing it after a DELETE fails (transiently) every time."""


def attempts(path: str) -> int:
    try:
        return int(Path(path).read_text() or 0)
    except FileNotFoundError:
        return 0


@dataclasses.dataclass(frozen=True)
class Attempt(Action):
    counter_path: str
    fail_times: int
    hang_seconds: float

    def run(self) -> None:
        count = attempts(self.counter_path) + 1
        Path(self.counter_path).write_text(str(count))
        if self.hang_seconds:
            time.sleep(self.hang_seconds)  # the controller under test hangs; this is not synchronisation
        if self.fail_times < 0 or count <= self.fail_times:
            raise TransientError(f"simulated failure {count}")

    def __str__(self) -> str:
        return f"attempt {attempts(self.counter_path) + 1}"


class FlakyController(Controller[Flaky, int]):
    model = Flaky

    def observe(self, desired: Flaky) -> int:
        return attempts(desired.counter_path)

    def plan(self, desired: Flaky, actual: int) -> list[Action]:
        if desired.fail_times >= 0 and actual > desired.fail_times:
            return []
        return [Attempt(desired.counter_path, desired.fail_times, desired.hang_seconds)]

    def teardown(self, desired: Flaky, actual: int) -> list[Action]:
        return [FailingTeardown()] if desired.teardown_fails else []


@dataclasses.dataclass(frozen=True)
class FailingTeardown(Action):
    def run(self) -> None:
        raise TransientError("simulated teardown failure")

    def __str__(self) -> str:
        return "tear down"


registry.register(FlakyController())


class Noop(Resource, table=True):
    """A kind whose real state always matches: every reconcile is a no-op (for load and fault tests)."""

    __tablename__: ClassVar[str] = "noops"  # type: ignore[misc]
    __table_args__ = common_constraints("noops")
    kind: ClassVar[str] = "Noop"

    note: str = Field(default="", sa_column_kwargs={"server_default": "''"})


class NoopController(Controller[Noop, None]):
    model = Noop

    def observe(self, desired: Noop) -> None:
        return None

    def plan(self, desired: Noop, actual: None) -> list[Action]:
        return []


registry.register(NoopController())


class Steps(Resource, table=True):
    """A kind whose plan is several slow actions, each writing a line before it works (for lock liveness tests).

    Its table is created by the tests that use it (tests.test_lock_liveness), not by create_test_kinds."""

    __tablename__: ClassVar[str] = "steps"  # type: ignore[misc]
    __table_args__ = common_constraints("steps")
    kind: ClassVar[str] = "Steps"

    log_path: str
    """A file each action appends `<step> <attempt>` to, where attempt names the reconcile that planned it."""
    steps: int = Field(default=3, sa_column_kwargs={"server_default": "3"})
    step_seconds: float = Field(default=1, sa_column_kwargs={"server_default": "1"})


def step_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


@dataclasses.dataclass(frozen=True)
class Step(Action):
    log_path: str
    index: int
    seconds: float
    attempt: str

    def run(self) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"{self.index} {self.attempt}\n")
        time.sleep(self.seconds)  # the action under test is slow; this is not synchronisation

    def __str__(self) -> str:
        return f"step {self.index}"


class StepsController(Controller[Steps, tuple[int, ...]]):
    model = Steps

    def observe(self, desired: Steps) -> tuple[int, ...]:
        return tuple(int(line.split()[0]) for line in step_lines(desired.log_path))

    def plan(self, desired: Steps, actual: tuple[int, ...]) -> list[Action]:
        attempt = uuid.uuid4().hex[:8]  # not pure, on purpose: the lines tell which reconcile wrote them
        missing = [i for i in range(desired.steps) if i not in actual]
        return [Step(desired.log_path, i, desired.step_seconds, attempt) for i in missing]


registry.register(StepsController())
