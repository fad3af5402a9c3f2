"""What the workers last saw and did for each resource of every kind, and when it is next due.

One row per resource, created by the desired tables' triggers and written afterwards by workers (the
scheduler touches just the claim columns, and marks resources of a silent node NodeLost through
setpoint_mark_nodes_lost). Keyed by kind and name, so a deleted resource keeps its
row, with its last desired state, until its controller has torn the real thing down.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import CheckConstraint, Index, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import DateTime, Field, SQLModel

from models.node import node_check

PHASES = (
    "Pending", "Waiting", "Ready", "Progressing", "Drifted", "Degraded", "Failed", "Invalid", "Deleting", "Unknown",
    "Held",
)  # fmt: skip
"""`Held`: a policy's rollout limit keeps its new generation waiting (its Held condition names the policy and why).
`Unknown`: the node the resource lives on has gone silent, so nobody can say how it is (reason NodeLost).
`Waiting`: a dependency is missing or not ready, so it observes and reports but does not act."""


BUSY = "enqueued_at IS NOT NULL OR NOT ready OR observed_generation IS DISTINCT FROM generation"
"""A status that is in flight or not ready at its current generation: few of them, in a healthy fleet."""


def _timestamp() -> Any:
    return Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


def _json(default: str) -> Any:
    return Field(
        default=None,
        nullable=False,
        sa_type=JSONB,  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text(f"'{default}'::jsonb")},
    )


class Status(SQLModel, table=True):
    __tablename__: ClassVar[str] = "statuses"  # type: ignore[misc]
    __table_args__ = (
        CheckConstraint("phase IN ('" + "', '".join(PHASES) + "')", name="phase_known"),
        node_check("node"),
        Index("ix_statuses_due", "next_reconcile_at", postgresql_where=text("next_reconcile_at IS NOT NULL")),
        # What policies count at every claim (scheduler/policies.py): in flight, or not ready at its generation.
        Index("ix_statuses_busy", "kind", postgresql_where=text(BUSY)),
    )

    kind: str = Field(primary_key=True, max_length=63)
    name: str = Field(primary_key=True, max_length=253)
    uid: uuid.UUID = Field(sa_type=Uuid)  # type: ignore[call-overload]
    """The desired row's uid, copied by its trigger at INSERT and kept by its tombstone: which life of the name
    this status belongs to."""
    generation: int = Field(default=1)
    """The desired row's generation, copied by its trigger."""
    observed_generation: int | None = None
    ready: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    phase: str = Field(default="Pending", max_length=16, sa_column_kwargs={"server_default": text("'Pending'")})
    conditions: list[dict[str, Any]] | None = _json("[]")
    """Kubernetes-shaped: type, status ('True'/'False'/'Unknown'), reason, message, last_transition_time."""
    observed: dict[str, Any] | None = _json("{}")
    """The actual state the controller last observed."""
    drift: list[dict[str, Any]] | None = _json("[]")
    """What differed from the desired state at the last observation: field, desired, actual."""
    outputs: dict[str, Any] | None = _json("{}")
    """What other resources may reference (`{{ File/app-conf.outputs.sha256 }}`), as its controller published it at
    its last successful reconcile; a change makes every resource that depends on it due at once."""
    consecutive_failures: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})
    last_error: str | None = None
    last_reconcile_at: datetime | None = _timestamp()
    last_success_at: datetime | None = _timestamp()
    next_reconcile_at: datetime | None = _timestamp()
    """When the scheduler next enqueues a reconcile; set it to now() to reconcile at once, NULL to never."""
    interval_seconds: int | None = None
    """The effective period used for the last reconcile (the row's, else its kind's)."""

    node: str | None = Field(default=None, max_length=253)
    """The node whose workers reconcile this resource (copied from the desired row's `node`, if it has one, else
    pinned by the first worker of a host-local kind). Workers may only pin it (NULL to a name, through
    setpoint_pin_node); moving it is the admin's (`setpoint node drain`, `setpoint node forget`)."""

    # Scheduling bookkeeping: the claim that marks one pending message, so there is never a second.
    enqueued_at: datetime | None = _timestamp()
    """When the scheduler sent the pending message; NULL once a reconcile of it has finished."""
    picked_at: datetime | None = _timestamp()
    """When a worker last started reconciling it: a claim never picked up within an interval was lost."""
    claim: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})
    claimed_generation: int | None = None
    """The generation the last claim was for: once it is the current one, the resource works on it (policies)."""
    rollout_started_at: datetime | None = _timestamp()
    """When the claim of its current generation started it (a rollout's failures count from `resumed_at` on)."""
    labels: dict[str, Any] | None = _json("{}")
    """The desired row's labels, copied by its trigger, for policies' selectors (models/policy.py)."""

    # Set by the delete trigger: the last desired row, kept until teardown succeeds.
    deleted_at: datetime | None = _timestamp()
    last_desired: dict[str, Any] | None = Field(default=None, sa_type=JSONB)  # type: ignore[call-overload]
