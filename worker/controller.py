"""The contract a controller writer implements; the runtime (worker/runtime.py) does everything else.

A controller holds the operational knowledge for one kind:

    class FileController(Controller[File, FileState]):
        model = File                                  # the SQLModel table holding desired state
        def observe(self, desired: File) -> FileState: ...          # read the real world
        def plan(self, desired: File, actual: FileState) -> list[Action]: ...   # pure: [] means in sync
        def teardown(self, desired: File, actual: FileState) -> list[Action]: ...  # after DELETE

Each reconcile re-reads the world (level-based): the runtime loads the desired row, calls `validate`,
`observe` and `plan`, runs the actions in order and records status and a run row. Actions are values
(frozen dataclasses) whose `run()` is idempotent: safe to run twice, safe to be killed at any line.

Optional: `health(desired, actual)` says whether what runs is healthy (a `Healthy` condition apart from
`Synced`, as Argo CD separates them; `Health(progressing=True)` for one on its way, such as a rollout, which is
phase `Progressing`, never `Degraded`), and `requeue_after(desired, actual)` asks for the next look sooner
than the interval (while a rollout progresses, or when a crash-loop backoff ends).
`watches(desired)` names the paths whose change should make the resource due at once (worker/watcher.py keeps
them on the resource's node); the interval stays the safety net for any event missed. `outputs(desired, actual)`
publishes what other resources may reference; a resource acts only once what it depends on is ready, and its
templated fields come to the controller with their references resolved (worker/needs.py, worker/references.py).

Errors: raise `TransientError` (or let any exception escape) for what may work later; it is retried with
backoff. Raise `PermanentError` or `InvalidSpec(field, message)` for what cannot work until the desired
row changes; it is recorded in status with its reason and message and not retried until then.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Generic, TypeVar

from models.base import Resource
from setpoint.errors import InvalidSpec, PermanentError, TransientError

__all__ = ["Action", "Controller", "Health", "InvalidSpec", "PermanentError", "TransientError", "Watch"]

D = TypeVar("D", bound=Resource)
O = TypeVar("O")  # noqa: E741 - the observed state, often a frozen dataclass


@dataclasses.dataclass(frozen=True)
class Action:
    """One idempotent step towards the desired state; `str(action)` is what history and plans show."""

    def run(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.run")


@dataclasses.dataclass(frozen=True)
class Health:
    """Whether the real thing works, beyond matching its desired state: reason is CamelCase, as in conditions."""

    healthy: bool
    reason: str
    message: str
    progressing: bool = False
    """Not healthy yet but on its way (starting, rolling out): phase Progressing, not Degraded."""


@dataclasses.dataclass(frozen=True)
class Watch:
    """A path whose change makes the resource due at once: the path itself (edited, chmod-ed, deleted, renamed
    over) and the folders above it; with `names`, also the files in the folder at `path` whose names match one
    of these globs (a replica's `*.exit` record, not its chatty log)."""

    path: str
    names: tuple[str, ...] = ()


class Controller(Generic[D, O]):
    model: ClassVar[type[Resource]]
    """The SQLModel table class for this kind; its `kind` names the kind."""

    interval_seconds: ClassVar[int | None] = None
    """This kind's default period (a row's own interval_seconds wins); None means the global default."""

    host_local: ClassVar[bool] = False
    """Whether its real things live on the worker's own host (files, processes): then the first worker to
    reconcile a resource keeps it, through its node's queue, so no other host starts a second copy."""

    def validate(self, desired: D) -> None:
        """Raise InvalidSpec(field, message) for desired state the database constraints let through."""

    def observe(self, desired: D) -> O:
        raise NotImplementedError

    def plan(self, desired: D, actual: O) -> list[Action]:
        raise NotImplementedError

    def teardown(self, desired: D, actual: O) -> list[Action]:
        """What removes the real thing once its row is deleted; nothing by default."""
        return []

    def health(self, desired: D, actual: O) -> Health | None:
        """How healthy the observed state is; None (the default) when the kind has no such notion."""
        return None

    def requeue_after(self, desired: D, actual: O) -> float | None:
        """Seconds until the next reconcile should look again, if sooner than the interval."""
        return None

    def watches(self, desired: D) -> tuple[Watch, ...]:
        """What to watch on the resource's node so a change there is healed at once; nothing by default. It
        depends on the desired row alone, so the watcher keeps watches without observing anything."""
        return ()

    def outputs(self, desired: D, actual: O) -> dict[str, Any]:
        """What other resources may reference (`{{ File/app-conf.outputs.sha256 }}`): a small JSON object, published
        in status.outputs; when it changes, the resources that depend on this one are due at once."""
        return {}

    def describe(self, actual: O) -> dict[str, Any]:
        """The observed state as JSON for status.observed; dataclasses are converted for you."""
        if dataclasses.is_dataclass(actual) and not isinstance(actual, type):
            return dataclasses.asdict(actual)
        return {"value": actual} if actual is not None else {}
