"""Policies: limits on how many resources of a scope the scheduler starts at once, per minute, or per rollout wave.

Admins edit the table with SQL like everything else; the scheduler's claim (scheduler/claim.py) reads it at every
tick, so a committed change takes effect at the next one (claims take turns on an advisory lock, never on the
policies' rows: an admin's open transaction holds nobody up). What the scheduler and workers keep of a policy (its
token bucket, a back-off) lives in `policy_statuses`. A resource is in a policy's scope when its
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
MAX_KINDS = 64


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
        check(
            f"kinds IS NULL OR cardinality(kinds) BETWEEN 1 AND {MAX_KINDS}",
            "kinds_size",
            f"NULL (every kind) or 1 to {MAX_KINDS} kinds",
        ),
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
    """The kinds in scope (`{File,Workload}`, spelled as the CLI takes them, stored as the kinds' names); NULL: every
    kind."""
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
    created_at: datetime | None = Field(
        default=None,
        nullable=False,
        sa_type=DateTime(timezone=True),  # type: ignore[call-overload]
        sa_column_kwargs={"server_default": text("now()")},
    )


class PolicyStatus(SQLModel, table=True):
    """What the scheduler and workers keep of a policy, apart from what admins edit: a claim never waits for an admin's
    open transaction on `policies`, and an admin's edit never waits for a claim. A row is made at the first need and
    forgotten by the next claim once its policy is gone."""

    __tablename__: ClassVar[str] = "policy_statuses"  # type: ignore[misc]

    name: str = Field(primary_key=True, max_length=253)
    """The policy's name."""
    tokens: float | None = Field(default=None, description="Starts left in the bucket at refilled_at.")
    refilled_at: datetime | None = _timestamp("When the scheduler last took starts from the bucket.")
    backoff_until: datetime | None = _timestamp(
        "Nothing of the scope starts before this: a target answered 429 or 503 with Retry-After (setpoint_back_off);"
        " an admin may clear it with SQL."
    )


BURST_SQL = "COALESCE(p.burst, GREATEST(1, ceil(p.max_per_minute / 60.0)))"
"""The token bucket's size: the policy's burst, else one second's worth of its rate (at least one start)."""


# What a rollout counts, as SQL conditions on a status (alias `s`) and a policy (alias `p`). A change (a new generation
# or a deletion) is *to start* until a claim starts it; the claim sets rollout_started_at, and the change is *working*
# (it holds a slot of every max_unready it is in) until it is done: ready at its generation (the worker clears
# rollout_started_at) or gone. A change that does nothing for now (waiting) gives its slot back while no reconcile of it
# runs, and takes one again to act.

WAITING_REASONS = ("Paused", "DependentsExist", "OwnedExist", "OwnedNotReady")
"""Reasons of a Ready condition that say the resource changes nothing for now: paused (drift reported, not corrected),
a deletion waiting for its dependents or for what it owns to go first, or an owner waiting for what it owns (which
take slots of their own)."""


def waiting(s: str) -> str:
    """Changes nothing for now: waiting for its dependencies, held back by a rollout, or one of WAITING_REASONS."""
    patterns = ", ".join(f"""'[{{"type": "Ready", "reason": "{r}"}}]'""" for r in WAITING_REASONS)
    return f"({s}.phase IN ('Waiting', 'Held') OR {s}.conditions @> ANY (ARRAY[{patterns}]::jsonb[]))"


def unclaimed(s: str) -> str:
    """A change no claim has started yet: a new generation not claimed for, or a deletion not claimed since."""
    return f"""(({s}.deleted_at IS NULL AND {s}.claimed_generation IS DISTINCT FROM {s}.generation)
    OR ({s}.deleted_at IS NOT NULL AND COALESCE({s}.rollout_started_at, '-infinity') < {s}.deleted_at))"""


def to_start(s: str) -> str:
    """A change whose rollout has not started, or that gave its slot back while waiting: claiming it takes a slot."""
    return f"({unclaimed(s)} OR ({s}.rollout_started_at IS NOT NULL AND {waiting(s)}))"


def working(s: str) -> str:
    """A started change not done: a reconcile of it runs, or it is not waiting and is still the resource's current
    change (its generation, or its deletion). A resource that was ready at its generation and degrades later holds
    nothing: that is drift, not a rollout."""
    return f"""({s}.rollout_started_at IS NOT NULL AND ({s}.enqueued_at IS NOT NULL OR (NOT {waiting(s)}
        AND (({s}.deleted_at IS NULL AND {s}.claimed_generation = {s}.generation)
             OR {s}.rollout_started_at >= {s}.deleted_at))))"""


def _failed(s: str) -> str:
    """Its last reconcile failed, or left it unhealthy (Degraded: not on its way, as Progressing is). A deletion keeps
    its phase, Deleting: its failures are counted."""
    return f"""CASE WHEN {s}.deleted_at IS NULL THEN {s}.phase IN ('Failed', 'Invalid', 'Degraded')
                ELSE {s}.consecutive_failures > 0 END"""


def failing(s: str, p: str) -> str:
    """Working and failing, in a rollout started after policy `p` was last resumed: it counts towards max_failures
    while it fails (a retry that succeeds frees it)."""
    return f"({working(s)} AND {_failed(s)} AND {s}.rollout_started_at > COALESCE({p}.resumed_at, '-infinity'))"


def holding(s: str, p: str) -> str:
    """Holds a slot of policy `p`'s max_unready: working, unless it is a failure the policy was resumed past. Resuming
    a halted rollout lets it go on with every slot; the failures it went past keep retrying, outside its waves."""
    return f"""({working(s)} AND NOT ({_failed(s)}
                                    AND {s}.rollout_started_at <= COALESCE({p}.resumed_at, '-infinity')))"""


IN_ROLLOUT_FUNCTION = """
CREATE FUNCTION setpoint_in_rollout(p_kind text, p_labels jsonb) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM policies AS p
                   WHERE (p.max_unready IS NOT NULL OR p.max_failures IS NOT NULL)
                     AND (p.kinds IS NULL OR p_kind = ANY(p.kinds))
                     AND (p.selector IS NULL OR p_labels @> p.selector))
$$;
"""
"""Whether a rollout policy's scope holds a resource: asked by a worker (as the function's owner: it reads no policy)
only when the message it took was claimed before the change it would apply (worker/store.py)."""
IN_ROLLOUT_SIGNATURE = "setpoint_in_rollout(text, jsonb)"


def in_scope(s: str, p: str = "p") -> str:
    """Status `s` is in policy `p`'s scope."""
    return f"({p}.kinds IS NULL OR {s}.kind = ANY({p}.kinds)) AND ({p}.selector IS NULL OR {s}.labels @> {p}.selector)"


WITHOUT_HELD = """COALESCE((SELECT jsonb_agg(c) FROM jsonb_array_elements(s.conditions) AS c
                              WHERE c->>'type' <> 'Held'), '[]'::jsonb)"""

HOLD_FUNCTION = f"""
CREATE FUNCTION setpoint_hold(p_holds jsonb, p_kinds text[], p_names text[], p_most integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    marked integer;
BEGIN
    -- claimed since it was held: its reconcile is on its way, and will say how it went
    UPDATE statuses AS s
    SET phase = CASE WHEN s.deleted_at IS NOT NULL THEN 'Deleting' ELSE 'Pending' END, conditions = {WITHOUT_HELD}
    FROM (SELECT s.kind, s.name FROM statuses AS s JOIN unnest(p_kinds, p_names) AS claimed (kind, name)
              ON s.kind = claimed.kind AND s.name = claimed.name
          WHERE s.enqueued_at IS NOT NULL AND s.phase = 'Held'
          FOR UPDATE OF s SKIP LOCKED) AS claimed
    WHERE s.kind = claimed.kind AND s.name = claimed.name;
    WITH holds AS (SELECT * FROM jsonb_to_recordset(p_holds) AS h (name text, reason text, message text)),
    held AS (
        SELECT DISTINCT ON (s.kind, s.name) s.kind, s.name, h.name AS policy, h.reason, h.message
        FROM statuses AS s JOIN policies AS p ON {in_scope("s")}
        JOIN holds AS h ON h.name = p.name
        WHERE s.next_reconcile_at <= now() AND s.enqueued_at IS NULL AND {to_start("s")}
          -- written once, and again only when the policy or the reason changes
          AND NOT (s.phase = 'Held' AND s.conditions @> jsonb_build_array(
              jsonb_build_object('type', 'Held', 'policy', h.name, 'reason', h.reason)))
        ORDER BY s.kind, s.name, h.name
        LIMIT p_most
    ),
    -- locked, and looked at again as committed now: a row claimed meanwhile (enqueued) is not marked; one a worker or
    -- an admin's open transaction holds is left for a later claim rather than waited for
    locked AS (
        SELECT s.kind, s.name FROM statuses AS s JOIN held ON s.kind = held.kind AND s.name = held.name
        WHERE s.enqueued_at IS NULL
        FOR UPDATE OF s SKIP LOCKED
    )
    UPDATE statuses AS s SET phase = 'Held',
        conditions = jsonb_build_array(jsonb_build_object('type', 'Held', 'status', 'True', 'policy', held.policy,
            'reason', held.reason, 'message', held.message, 'last_transition_time', now())) || {WITHOUT_HELD}
    FROM held JOIN locked ON locked.kind = held.kind AND locked.name = held.name
    WHERE s.kind = held.kind AND s.name = held.name;
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;
"""
"""What the scheduler writes of a status besides its claim columns, as the function's owner (migration 0020), after
each claim has committed: the held resources claimed since (`p_kinds`, `p_names`) are Pending (or Deleting) again;
and up to `p_most` due changes that a full or halted rollout keeps waiting become Held, with a condition naming the
policy and why (`p_holds`: [{{name, reason, message}}]). Bounded, so that a rollout holding back 100,000 changes
marks them over several claims rather than in one long statement; it never waits for a row lock."""

HOLD_SIGNATURE = "setpoint_hold(jsonb, text[], text[], integer)"

MAX_BACK_OFF_SECONDS = 3600
BACK_OFF_FUNCTION = f"""
CREATE FUNCTION setpoint_back_off(p_kind text, p_name text, p_seconds double precision) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    marked integer;
BEGIN
    INSERT INTO policy_statuses AS b (name, backoff_until)
    SELECT p.name, now() + make_interval(secs => LEAST(GREATEST(p_seconds, 0), {MAX_BACK_OFF_SECONDS}))
    FROM policies AS p JOIN statuses AS s ON {in_scope("s")}
    WHERE s.kind = p_kind AND s.name = p_name
      -- a rate policy narrowed to some kinds or labels: the model of one target's limit, not the whole fleet's
      AND p.max_per_minute IS NOT NULL AND (p.kinds IS NOT NULL OR p.selector IS NOT NULL)
    ON CONFLICT (name) DO UPDATE SET backoff_until = GREATEST(b.backoff_until, EXCLUDED.backoff_until);
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;
"""
"""What a worker writes of policies, as the function's owner: a target answered "too many requests, come back in N
seconds" (a 429 or 503 with Retry-After, TransientError.retry_after_s) for one resource, so every rate policy
(max_per_minute) narrowed by kinds or a selector whose scope holds it starts nothing more of that scope until then (at
most an hour), not just that resource's next attempt. A policy over the whole fleet, or without a rate, never backs
off: one API's limit must not stop every other kind. It writes `policy_statuses`, never `policies`, so an admin's open
transaction on a policy never blocks a worker. Returns how many policies it marked."""

BACK_OFF_SIGNATURE = "setpoint_back_off(text, text, double precision)"

KINDS_FUNCTION = f"""
CREATE FUNCTION setpoint_scope_kinds() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    spelled text;
    canonical text;
    kept text[] := '{{}}';
BEGIN
    IF NEW.kinds IS NULL THEN
        RETURN NEW;
    END IF;
    IF cardinality(NEW.kinds) > {MAX_KINDS} THEN  -- before looking each one up
        RAISE EXCEPTION 'kinds: % kinds given, at most {MAX_KINDS}', cardinality(NEW.kinds)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_' || TG_TABLE_NAME || '_kinds_size';
    END IF;
    FOREACH spelled IN ARRAY NEW.kinds LOOP
        SELECT k.kind INTO canonical FROM setpoint_kinds() AS k
        WHERE lower(k.kind) = lower(btrim(spelled)) OR k.plural = lower(btrim(spelled)) ORDER BY k.kind LIMIT 1;
        IF canonical IS NULL THEN
            RAISE EXCEPTION 'kinds: % is not a kind; known kinds: %', quote_nullable(spelled),
                (SELECT string_agg(k.kind || ' (' || k.plural || ')', ', ' ORDER BY k.kind) FROM setpoint_kinds() AS k)
                USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_' || TG_TABLE_NAME || '_kinds_known';
        END IF;
        IF NOT canonical = ANY(kept) THEN
            kept := kept || canonical;
        END IF;
    END LOOP;
    NEW.kinds := kept;
    RETURN NEW;
END $$;
CREATE TRIGGER setpoint_scope_kinds BEFORE INSERT OR UPDATE OF kinds ON policies
    FOR EACH ROW EXECUTE FUNCTION setpoint_scope_kinds();
"""
"""A policy's kinds as the CLI takes them (File, file, files), stored as the kinds' names; a kind that does not exist
(a typo would otherwise match nothing, silently) is refused naming `kinds` and listing the known ones."""
