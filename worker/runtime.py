"""One reconcile of one resource, as the Celery task runs it: lock, read, observe, plan, act, record.

Level-based, as in controller-runtime: the request names the resource and nothing else, and every run
re-reads the desired row and the real world. A missing row without a tombstone means there is nothing
to do; a tombstone (the delete trigger's copy of the last desired row) means tear down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from setpoint.errors import InvalidSpec, LockLost, PermanentError, StaleConnection, TransientError, UnknownKind
from setpoint.settings import Settings
from worker import metrics, needs, owned, references, registry, secrets, store
from worker.controller import Controller
from worker.outcome import Result, Retry, status_update

log = logging.getLogger("setpoint.reconcile")


@dataclasses.dataclass(frozen=True)
class Request:
    kind: str
    name: str
    claim: int | None = None
    """The scheduler's claim number; a message whose claim was superseded is a duplicate and is dropped."""
    attempt: int = 0
    task_id: str | None = None
    worker: str | None = None


@dataclasses.dataclass(frozen=True)
class Done:
    """How a reconcile ended: its outcome (or why it was skipped), and a quick retry if one is due."""

    outcome: str
    retry: Retry | None = None


def run_controller(
    controller: Controller[Any, Any],
    desired: Any,
    *,
    deleting: bool,
    still_locked: Callable[[], bool] | None = None,
    hold: needs.Hold | None = None,
    plan: bool = True,
) -> Result:
    """Validate, observe, plan and act, turning every error into a Result: nothing escapes but interrupts, and
    LockLost when `still_locked` says, before any action, that the resource is no longer ours (observing may
    have taken seconds: a session ended meanwhile must not act even once). With a `hold` (dependencies not
    ready) it observes and plans but does not act; without `plan` (references unresolved) it only observes."""
    done: list[str] = []
    drift: tuple[str, ...] = ()
    observed: dict[str, Any] = {}
    try:
        if not deleting:
            controller.validate(desired)
        try:
            actual = controller.observe(desired)
        except Exception as error:
            if hold is None:
                raise
            # Held on what it needs (a server's secret not set yet): it cannot even look, and says why it waits.
            log.info("observing while held failed", extra={"error": type(error).__name__})
            return Result("waiting", (), (), {}, hold.message, hold.reason)
        observed = controller.describe(actual)
        outputs = None if deleting else controller.outputs(desired, actual)
        if deleting:
            actions = controller.teardown(desired, actual)
        else:
            actions = controller.plan(desired, actual) if plan else []
        drift = tuple(str(action) for action in actions)
        health = None if deleting else controller.health(desired, actual)
        requeue = None if deleting else controller.requeue_after(desired, actual)
        if desired.paused and not deleting:
            return Result("paused", drift=drift, observed=observed, health=health, outputs=outputs)
        if hold is not None:
            return Result("waiting", (), drift, observed, hold.message, hold.reason, health=health, outputs=outputs)
        for action in actions:
            if still_locked is not None and not still_locked():
                raise LockLost(f"lock lost after {len(done)} of {len(actions)} actions")
            action.run()
            done.append(str(action))
    except LockLost:
        raise
    except InvalidSpec as error:
        return Result("invalid", tuple(done), drift, observed, str(error), error.reason)
    except PermanentError as error:
        return Result("failed", tuple(done), drift, observed, str(error), error.reason)
    except Exception as error:  # anything else may work next time: retried with backoff
        message = f"{type(error).__name__}: {error}"
        after = error.retry_after_s if isinstance(error, TransientError) else None
        return Result(
            "failed", tuple(done), drift, observed, message, "ReconcileError", transient=True, retry_after_s=after
        )
    if deleting:
        return Result("deleted", tuple(done), drift, observed)
    if not done:
        return Result("noop", (), drift, observed, health=health, requeue_after_s=requeue, outputs=outputs)
    changed = Result("changed", tuple(done), drift, observed, health=health, requeue_after_s=requeue, outputs=outputs)
    return _looked_again(controller, desired, changed)


def _looked_again(controller: Controller[Any, Any], desired: Any, changed: Result) -> Result:
    """The change as the world stands after its actions (the drift left, what is observed, its health), so status
    shows what the reconcile left rather than what it found; as it was if looking again fails."""
    try:
        actual = controller.observe(desired)
        return dataclasses.replace(
            changed,
            drift=tuple(str(action) for action in controller.plan(desired, actual)),
            observed=controller.describe(actual),
            health=controller.health(desired, actual),
            requeue_after_s=controller.requeue_after(desired, actual),
            outputs=controller.outputs(desired, actual),
        )
    except Exception as error:  # the actions ran: the run is still a change
        error_text = secrets.scrub_read(f"{type(error).__name__}: {error}")
        log.warning("observing after the actions failed", extra={"error": error_text})
        return changed


def reconcile(
    request: Request, *, engine: Engine, settings: Settings, now: Callable[[], datetime], rng: random.Random
) -> Done:
    """Reconcile, once more on a new connection if the pooled one was dead before anything ran (the server
    restarted); SQLAlchemy has then dropped every pooled connection older than the failure."""
    try:
        try:
            return _reconcile(request, engine, settings, now, rng)
        except StaleConnection as error:
            log.warning(
                "stale database connection, reconciling again", extra={"resource": request.name, "error": str(error)}
            )
            return _reconcile(request, engine, settings, now, rng)
    except LockLost as error:
        # Its claim stays marked; the scheduler sends it again once nobody holds the lock (or the other
        # reconcile, if one started, finishes it).
        log.warning(
            "lock lost, reconcile abandoned",
            extra={"kind": request.kind, "resource": request.name, "task_id": request.task_id, "error": str(error)},
        )
        return Done("lock-lost")


def _reconcile(
    request: Request, engine: Engine, settings: Settings, now: Callable[[], datetime], rng: random.Random
) -> Done:
    try:
        controller = registry.get(request.kind)
    except UnknownKind as error:
        with engine.begin() as conn, _first_statement():
            store.record_unknown_kind(conn, request.kind, request.name, str(error), settings.default_interval_seconds)
        return Done("unknown-kind")
    table: str = controller.model.__tablename__  # type: ignore[assignment]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        locked = finished = False
        try:
            with _first_statement():
                snapshot = store.begin(conn, table, request.kind, request.name)
            locked = snapshot.locked
            if not locked:
                return Done("busy")  # another worker is reconciling it right now
            status = snapshot.status
            deleting = snapshot.desired is None
            if status is None:
                return Done("gone")  # not found is done
            if deleting and status.get("last_desired") is None:
                store.forget(conn, request.kind, request.name)  # a status without row or tombstone (a TRUNCATE)
                return Done("gone")
            if request.claim is not None and status["claim"] != request.claim:
                return Done("superseded")  # a newer message for it is queued
            if snapshot.rollout_waits:
                store.hand_back(conn, request.kind, request.name, status["claim"])
                return Done("rollout")  # a change landed after its claim: the rollout's policy says when it starts
            done = _run(controller, request, snapshot, status, deleting, conn, settings, now, rng)
            finished = True
            return done
        finally:
            if locked and not finished:
                _release(conn, request)


@contextlib.contextmanager
def _first_statement() -> Iterator[None]:
    """A pooled connection is not checked before use (a round trip per reconcile saved): one the server closed
    fails on the first statement, before anything has run, and says so."""
    try:
        yield
    except DBAPIError as error:
        if error.connection_invalidated:
            raise StaleConnection(f"{type(error.orig).__name__}: {error.orig}") from error
        raise


def _run(
    controller: Controller[Any, Any],
    request: Request,
    snapshot: store.Snapshot,
    status: dict[str, Any],
    deleting: bool,
    conn: Any,
    settings: Settings,
    now: Callable[[], datetime],
    rng: random.Random,
) -> Done:
    """Drive the controller over one resource and record what came of it (which also unlocks)."""
    started = now()
    desired = controller.model.model_validate(snapshot.desired or status["last_desired"])
    with secrets.recording() as used:
        result = _drive(
            controller,
            desired,
            snapshot,
            deleting,
            lambda: store.holds_lock(conn, request.kind, request.name),
            lambda: store.delete_owned(conn, request.kind, request.name),
        )
    result = _scrubbed(result, used)
    finished_at = now()
    run = store.RunRecord(
        uid=status["uid"],
        generation=desired.generation,
        started_at=started,
        finished_at=finished_at,
        outcome=result.outcome,
        actions=list(result.actions),
        error=result.error,
        worker=request.worker,
        task_id=request.task_id,
        attempt=request.attempt,
    )
    update, retry = None, None
    if result.outcome != "deleted":
        interval = desired.interval_seconds or controller.interval_seconds or settings.default_interval_seconds
        update, retry = status_update(
            result,
            generation=desired.generation,
            previous=status,
            interval_seconds=interval,
            settings=settings,
            now=finished_at,
            rng=rng,
        )
    if controller.host_local and status.get("node") is None:
        store.pin(conn, request.kind, request.name, settings.node_name)
    if result.retry_after_s is not None:
        store.back_off(conn, request.kind, request.name, result.retry_after_s)
    store.finish(conn, request.kind, request.name, request.claim, update, run, deleting=deleting)
    metrics.RECONCILE_DURATION.labels(kind=request.kind).observe(run.duration_ms / 1000)
    # Our own line for a no-op, every interval for every resource, is noise at INFO (Kubernetes controllers log
    # them verbosely only); Celery's own "received" and "succeeded" lines stay at INFO, as operators know them.
    log.log(
        logging.DEBUG if result.outcome == "noop" else logging.INFO,
        "reconciled",
        extra={
            "kind": request.kind,
            "resource": request.name,
            "outcome": result.outcome,
            "duration_ms": round(run.duration_ms, 2),
        },
    )
    return Done(result.outcome, retry)


def _drive(
    controller: Controller[Any, Any],
    desired: Any,
    snapshot: store.Snapshot,
    deleting: bool,
    still_locked: Callable[[], bool],
    delete_owned: Callable[[], list[str]] = list,
) -> Result:
    """Run the controller, held back while a dependency is not ready (or, deleting, while a resource it owns or a
    dependent exists: what it owns is deleted first)."""
    if deleting:
        waiting = owned.teardown_hold(delete_owned()) or needs.dependents_hold(snapshot.dependents, desired.owned_by)
        if waiting is not None:  # not torn down before what depends on it: nothing to observe meanwhile
            observed = (snapshot.status or {}).get("observed") or {}
            return Result("waiting", observed=observed, error=waiting.message, reason=waiting.reason)
        return run_controller(controller, desired, deleting=True, still_locked=still_locked)
    found = needs.of(snapshot.needs)
    resolved = references.resolve(desired, found)
    hold = needs.hold(found, resolved.unresolved)
    return run_controller(
        controller,
        resolved.desired,
        deleting=False,
        still_locked=still_locked,
        hold=hold,
        plan=not resolved.unresolved,
    )


def _scrubbed(result: Result, used: set[str]) -> Result:
    """The result without any secret value read while it was made: what status, history and logs may hold."""
    if not used:
        return result
    return dataclasses.replace(
        result,
        actions=tuple(secrets.scrub(list(result.actions), used)),
        drift=tuple(secrets.scrub(list(result.drift), used)),
        observed=secrets.scrub(result.observed, used),
        error=secrets.scrub(result.error, used),
        outputs=secrets.scrub(result.outputs, used),
        # A crash loop's or a failing check's message quotes what the replica printed: conditions show it.
        health=result.health and dataclasses.replace(result.health, message=secrets.scrub(result.health.message, used)),
    )


def _release(conn: Any, request: Request) -> None:
    try:
        store.unlock(conn, request.kind, request.name)
    except Exception:
        conn.invalidate()  # closing the session is what frees the lock if the unlock itself failed
