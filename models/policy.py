"""Policies: limits on how many resources of a scope the scheduler starts at once, per minute, or per rollout wave.

Admins edit the table with SQL like everything else; the scheduler's claim (scheduler/claim.py) reads and
locks it at every tick, so a change takes effect at the next one. A resource is in a policy's scope when its
kind is in `kinds` (NULL: every kind) and its labels contain `selector` (NULL: any labels); a resource in
several scopes obeys all of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import DateTime, Field, SQLModel

from models.base import NAME_PATTERN, check, json_limits

LIMITS = ("max_in_flight", "max_per_minute", "max_unready", "max_failures")


def _limit(doc: str) -> Any:
    return Field(default=None, description=doc)


def _timestamp(doc: str) -> Any:
    return Field(default=None, sa_type=DateTime(timezone=True), description=doc)  # type: ignore[call-overload]


def _positive(column: str, what: str) -> Any:
    return check(f"{column} IS NULL OR {column} >= 1", f"{column}_positive", f"{what}: a whole number >= 1, or NULL")


class Policy(SQLModel, table=True):
    __tablename__: ClassVar[str] = "policies"  # type: ignore[misc]
    __table_args__ = (
        check(f"name ~ '{NAME_PATTERN}'", "name_format", "lower-case letters, digits, '-', '_' or '.'"),
        check("kinds IS NULL OR cardinality(kinds) >= 1", "kinds_not_empty", "a non-empty list of kinds, or NULL"),
        check("selector IS NULL OR jsonb_typeof(selector) = 'object'", "selector_object", "an object of labels"),
        *json_limits("selector", "an object of labels"),
        _positive("max_in_flight", "reconciles of the scope at once"),
        _positive("max_per_minute", "reconciles of the scope started per minute"),
        _positive("burst", "starts allowed at once after a quiet spell"),
        check("burst IS NULL OR max_per_minute IS NOT NULL", "burst_with_rate", "set only with max_per_minute"),
        _positive("max_unready", "resources of the scope working on a new generation at once"),
        _positive("max_failures", "failures at new generations that halt the rollout"),
        check(
            "COALESCE(max_in_flight, max_per_minute, max_unready, max_failures) IS NOT NULL",
            "limit_given",
            "at least one of max_in_flight, max_per_minute, max_unready, max_failures",
        ),
    )

    name: str = Field(primary_key=True, max_length=253)
    kinds: list[str] | None = Field(default=None, sa_type=ARRAY(Text))  # type: ignore[call-overload]
    """The kinds in scope (`{File,Workload}`); NULL: every kind."""
    selector: dict[str, Any] | None = Field(default=None, sa_type=JSONB)  # type: ignore[call-overload]
    """Labels a resource's `labels` must contain (`labels @> selector`); NULL: any labels."""
    max_in_flight: int | None = _limit("At most this many reconciles of the scope at once.")
    max_per_minute: int | None = _limit("At most this many reconciles of the scope started per minute.")
    burst: int | None = _limit(
        "How many starts a quiet scope may make at once (the token bucket's size); NULL: one second's worth of"
        " max_per_minute, at least 1."
    )
    max_unready: int | None = _limit(
        "At most this many resources of the scope working on a new generation (started, not yet ready at it)."
    )
    max_failures: int | None = _limit(
        "The rollout halts once this many resources of the scope failed at their new generation."
    )
    resumed_at: datetime | None = _timestamp(
        "Failures of rollouts started before this no longer halt it (`setpoint rollout resume`)."
    )
    # The scheduler's bookkeeping: the token bucket, as of `refilled_at`.
    tokens: float | None = Field(default=None, description="Starts left in the bucket at refilled_at.")
    refilled_at: datetime | None = _timestamp("When the scheduler last took starts from the bucket.")
    backoff_until: datetime | None = _timestamp(
        "Nothing of the scope starts before this: a scope-wide back-off (set by SQL for now; meant for a"
        " controller's 429 Retry-After)."
    )
    created_at: datetime | None = Field(
        default=None,
        nullable=False,
        sa_type=DateTime(timezone=True),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("now()")},
    )


BURST_SQL = "COALESCE(burst, GREATEST(1, ceil(max_per_minute / 60.0)))"
"""The token bucket's size: the policy's burst, else one second's worth of its rate (at least one start)."""

WITHOUT_HELD = """COALESCE((SELECT jsonb_agg(c) FROM jsonb_array_elements(s.conditions) AS c
                              WHERE c->>'type' <> 'Held'), '[]'::jsonb)"""

HOLD_FUNCTION = f"""
CREATE FUNCTION setpoint_hold(p_holds jsonb, p_kinds text[], p_names text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    marked integer;
BEGIN
    -- claimed since it was held: its reconcile is on its way, and will say how it went
    UPDATE statuses AS s SET phase = 'Pending', conditions = {WITHOUT_HELD}
    FROM unnest(p_kinds, p_names) AS claimed (kind, name)
    WHERE s.kind = claimed.kind AND s.name = claimed.name AND s.enqueued_at IS NOT NULL AND s.phase = 'Held';
    WITH holds AS (SELECT * FROM jsonb_to_recordset(p_holds) AS h (name text, reason text, message text)),
    held AS (
        SELECT DISTINCT ON (s.kind, s.name) s.kind, s.name, h.name AS policy, h.reason, h.message
        FROM statuses AS s JOIN policies AS p
            ON (p.kinds IS NULL OR s.kind = ANY(p.kinds)) AND (p.selector IS NULL OR s.labels @> p.selector)
        JOIN holds AS h ON h.name = p.name
        WHERE s.next_reconcile_at <= now() AND s.enqueued_at IS NULL AND s.deleted_at IS NULL
          AND s.claimed_generation IS DISTINCT FROM s.generation
        ORDER BY s.kind, s.name, h.name
    )
    UPDATE statuses AS s SET phase = 'Held',
        conditions = jsonb_build_array(jsonb_build_object('type', 'Held', 'status', 'True', 'policy', held.policy,
            'reason', held.reason, 'message', held.message, 'last_transition_time', now())) || {WITHOUT_HELD}
    FROM held
    WHERE s.kind = held.kind AND s.name = held.name
      -- written once, and again only when the policy or the reason changes
      AND NOT (s.phase = 'Held' AND s.conditions @> jsonb_build_array(
          jsonb_build_object('type', 'Held', 'policy', held.policy, 'reason', held.reason)));
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;
"""
"""What the scheduler writes of a status besides its claim columns, as the function's owner (migration 0019): due new
generations that a full or halted rollout keeps waiting become Held, with a condition naming the policy and why
(`p_holds`: [{name, reason, message}]); and the held resources claimed since (`p_kinds`, `p_names`) are Pending
again."""

HOLD_SIGNATURE = "setpoint_hold(jsonb, text[], text[])"

MAX_BACK_OFF_SECONDS = 3600
BACK_OFF_FUNCTION = f"""
CREATE FUNCTION setpoint_back_off(p_kind text, p_name text, p_seconds double precision) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    marked integer;
BEGIN
    UPDATE policies AS p
    SET backoff_until = GREATEST(p.backoff_until,
                                 now() + make_interval(secs => LEAST(GREATEST(p_seconds, 0), {MAX_BACK_OFF_SECONDS})))
    FROM statuses AS s
    WHERE s.kind = p_kind AND s.name = p_name
      AND (p.kinds IS NULL OR s.kind = ANY(p.kinds)) AND (p.selector IS NULL OR s.labels @> p.selector)
      -- a rate policy narrowed to some kinds or labels: the model of one target's limit, not the whole fleet's
      AND p.max_per_minute IS NOT NULL AND (p.kinds IS NOT NULL OR p.selector IS NOT NULL);
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;
"""
"""What a worker writes of policies, as the function's owner: a target answered "too many requests, come back in N
seconds" (a 429 or 503 with Retry-After, TransientError.retry_after_s) for one resource, so every rate policy
(max_per_minute) narrowed by kinds or a selector whose scope holds it starts nothing more of that scope until then (at
most an hour), not just that resource's next attempt. A policy over the whole fleet, or without a rate, never backs
off: one API's limit must not stop every other kind.
Returns how many policies it marked."""

BACK_OFF_SIGNATURE = "setpoint_back_off(text, text, double precision)"
