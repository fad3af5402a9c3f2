"""What one pass of a controller found and did, and how that becomes status: pure, so tests compare values."""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime
from typing import Any

from setpoint.settings import Settings
from worker import needs, timing
from worker.controller import Health


@dataclasses.dataclass(frozen=True)
class Result:
    """The controller's pass: outcome is one of models.run.OUTCOMES."""

    outcome: str
    actions: tuple[str, ...] = ()
    """What was done, in order (for a failure: what was done before it)."""
    drift: tuple[str, ...] = ()
    """What the plan found different from the desired state."""
    observed: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    reason: str | None = None
    transient: bool = False
    health: Health | None = None
    requeue_after_s: float | None = None
    """The controller asked to look again this soon (a rollout in progress, a backoff ending)."""
    retry_after_s: float | None = None
    """A transient failure's earliest next attempt (TransientError.retry_after_s: a server's Retry-After)."""
    outputs: dict[str, Any] | None = None
    """What other resources may reference, as the controller published it; None keeps the last published."""

    @property
    def ok(self) -> bool:
        return self.outcome in ("noop", "changed", "paused", "waiting", "deleted")


@dataclasses.dataclass(frozen=True)
class StatusUpdate:
    """What a reconcile writes to its status row (worker/store.py turns it into SQL)."""

    observed_generation: int | None
    ready: bool
    phase: str
    conditions: list[dict[str, Any]]
    observed: dict[str, Any]
    drift: list[dict[str, Any]]
    outputs: dict[str, Any] | None
    """None keeps the outputs last published (a failed reconcile publishes nothing)."""
    consecutive_failures: int
    last_error: str | None
    last_success_at: datetime | None
    next_in_s: float | None
    """Seconds from now (the database's now) until the next reconcile; None waits for a change of the row."""
    interval_seconds: int
    release_claim: bool
    """False while a Celery retry of the same message is on its way, so the scheduler does not send another."""
    waiting: bool = False
    """It waited for its dependencies: due again at once if they are all ready by the time this is written."""


@dataclasses.dataclass(frozen=True)
class Retry:
    """A quick Celery retry of the same message after a transient failure."""

    countdown_s: float


def condition(
    type_: str, ok: bool, reason: str, message: str, now: datetime, previous: list[dict[str, Any]]
) -> dict[str, Any]:
    """A Kubernetes-shaped condition whose last_transition_time moves only when its status flips."""
    status = "True" if ok else "False"
    since = now.isoformat()
    for old in previous:
        if old.get("type") == type_ and old.get("status") == status:
            since = old.get("last_transition_time", since)
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "last_transition_time": since,
    }


def _conditions(
    result: Result, generation: int, now: datetime, previous: list[dict[str, Any]]
) -> tuple[str, bool, list[dict[str, Any]]]:
    """The phase, readiness and conditions (Ready, Synced, and Healthy where the kind has it)."""

    def cond(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return condition(type_, ok, reason, message, now, previous)

    if not result.ok:
        phase = "Invalid" if result.outcome == "invalid" else "Failed"
        message = f"will retry: {result.error}" if result.transient else (result.error or result.outcome)
        reason = result.reason or "ReconcileError"
        return phase, False, [cond("Ready", False, reason, message), cond("Synced", False, reason, message)]
    held = result.outcome in ("paused", "waiting")
    synced = not (held and result.drift)
    if result.outcome == "waiting":
        reason, message = result.reason or "DependencyNotReady", result.error or "waiting"
        drifted = "; drift left uncorrected: " + "; ".join(result.drift) if result.drift else ""
        synced_says = cond("Synced", synced, reason, message + drifted)
        return "Waiting", False, [cond("Ready", False, reason, message), synced_says]
    if result.outcome == "paused":
        reason = "Paused"
        message = "paused; in sync" if synced else "paused; drift left uncorrected: " + "; ".join(result.drift)
    elif result.actions:
        reason, message = "Applied", f"generation {generation} applied: " + "; ".join(result.actions)
    else:
        reason, message = "InSync", f"generation {generation} in sync"
    conditions = [cond("Synced", synced, reason, message)]
    health = result.health
    if health is not None:
        conditions.append(cond("Healthy", health.healthy, health.reason, health.message))
    if not synced:
        return "Drifted", False, [cond("Ready", False, reason, message), *conditions]
    if health is not None and not health.healthy:
        phase = "Progressing" if health.progressing else "Degraded"  # Degraded is for health failing
        return phase, False, [cond("Ready", False, health.reason, health.message), *conditions]
    if health is not None:
        message = f"{message}; {health.message}"
    return "Ready", True, [cond("Ready", True, reason, message), *conditions]


def status_update(
    result: Result,
    *,
    generation: int,
    previous: dict[str, Any],
    interval_seconds: int,
    settings: Settings,
    now: datetime,
    rng: random.Random,
) -> tuple[StatusUpdate, Retry | None]:
    """The status a result leaves behind, when the resource is next due, and whether Celery retries first."""
    phase, ready, conditions = _conditions(result, generation, now, previous.get("conditions") or [])
    failures = 0 if result.ok else int(previous.get("consecutive_failures") or 0) + 1
    retry: Retry | None = None
    next_in_s: float | None
    if result.ok:
        next_in_s = timing.jittered(interval_seconds, settings.jitter_ratio, rng)
        if result.requeue_after_s is not None:
            next_in_s = min(next_in_s, result.requeue_after_s)
    elif not result.transient:
        next_in_s = None  # permanent: not retried until the desired row changes (its trigger sets it due)
    else:
        next_in_s = timing.backoff_seconds(failures, settings.backoff_base_seconds, settings.backoff_max_seconds, rng)
        if result.retry_after_s is not None:  # the server said when: not before, whatever the backoff says
            next_in_s = max(next_in_s, result.retry_after_s)
        if failures <= settings.retry_attempts and next_in_s <= settings.quick_retry_max_seconds:
            retry = Retry(next_in_s)
    update = StatusUpdate(
        observed_generation=generation,
        ready=ready,
        phase=phase,
        conditions=conditions,
        observed=result.observed,
        drift=[{"change": item} for item in result.drift],
        outputs=result.outputs if result.ok else None,
        consecutive_failures=failures,
        last_error=None if result.ok else result.error,
        last_success_at=now if result.ok else _parse(previous.get("last_success_at")),
        next_in_s=next_in_s,
        interval_seconds=interval_seconds,
        release_claim=retry is None,
        # only a wait for dependencies ends when they turn ready; the other holds are woken by their own events
        waiting=result.outcome == "waiting" and result.reason in needs.DEPENDENCY_HOLDS,
    )
    return update, retry


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
