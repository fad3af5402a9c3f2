"""policies: limits on how many resources of a scope start at once, per minute, or per rollout wave

Table `policies` (scope: kinds, selector; limits: max_in_flight, max_per_minute with burst, max_unready,
max_failures; resumed_at for the admin; tokens, refilled_at, backoff_until for the scheduler). Statuses get the
desired row's `labels` (copied by setpoint_track, backfilled here), `claimed_generation` and `rollout_started_at`
(written by the claim), and the phase `Held`.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02 01:02:18.353139
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

from models import triggers

revision: str = '0019'
down_revision: str | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PHASES_BEFORE = (
    "'Pending', 'Ready', 'Drifted', 'Degraded', 'Failed', 'Invalid', 'Deleting', 'Unknown', 'Progressing', 'Waiting'"
)

BACKFILL = """
DO $$
DECLARE
    found record;
BEGIN
    FOR found IN SELECT t.tgrelid::regclass::text AS desired,
                        convert_from(substring(t.tgargs FROM 1 FOR length(t.tgargs) - 1), 'UTF8') AS kind
                 FROM pg_trigger AS t WHERE t.tgfoid = 'setpoint_track'::regproc AND t.tgnargs = 1 LOOP
        EXECUTE format('UPDATE statuses AS s SET labels = d.labels FROM %s AS d
                        WHERE s.kind = $1 AND s.name = d.name AND s.labels IS DISTINCT FROM d.labels', found.desired)
            USING found.kind;
    END LOOP;
END $$;
UPDATE statuses SET claimed_generation = observed_generation WHERE observed_generation IS NOT NULL;
"""
"""Labels of the rows there already are; and what was observed counts as started (not a rollout still to come)."""

GRANTS = """
GRANT SELECT ON policies TO setpoint_scheduler, setpoint_worker, setpoint_api;
GRANT UPDATE (tokens, refilled_at, backoff_until) ON policies TO setpoint_scheduler;
GRANT UPDATE (resumed_at) ON policies TO setpoint_api;
GRANT UPDATE (claimed_generation, rollout_started_at) ON statuses TO setpoint_scheduler;
"""
"""The scheduler locks policies and keeps their token buckets, and marks its claims' generations; it marks what a
rollout holds back (phase Held) only through setpoint_hold, which runs as its owner. The API may resume a halted
rollout. Admins write policies as the tables' owner."""

REVOKE = """
REVOKE UPDATE (claimed_generation, rollout_started_at) ON statuses FROM setpoint_scheduler;
"""


HOLD_FUNCTION = """
CREATE FUNCTION setpoint_hold(p_holds jsonb, p_kinds text[], p_names text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    marked integer;
BEGIN
    -- claimed since it was held: its reconcile is on its way, and will say how it went
    UPDATE statuses AS s SET phase = 'Pending', conditions = COALESCE((SELECT jsonb_agg(c) FROM jsonb_array_elements(s.conditions) AS c
                              WHERE c->>'type' <> 'Held'), '[]'::jsonb)
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
            'reason', held.reason, 'message', held.message, 'last_transition_time', now())) || COALESCE((SELECT jsonb_agg(c) FROM jsonb_array_elements(s.conditions) AS c
                              WHERE c->>'type' <> 'Held'), '[]'::jsonb)
    FROM held
    WHERE s.kind = held.kind AND s.name = held.name
      -- written once, and again only when the policy or the reason changes
      AND NOT (s.phase = 'Held' AND s.conditions @> jsonb_build_array(
          jsonb_build_object('type', 'Held', 'policy', held.policy, 'reason', held.reason)));
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;
"""
"""Due new generations that a full or halted rollout keeps waiting become Held; those claimed since, Pending (as of
this revision: 0020 bounds it and counts deletions)."""
HOLD_SIGNATURE = "setpoint_hold(jsonb, text[], text[])"
BACK_OFF_FUNCTION = """
CREATE FUNCTION setpoint_back_off(p_kind text, p_name text, p_seconds double precision) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    marked integer;
BEGIN
    UPDATE policies AS p
    SET backoff_until = GREATEST(p.backoff_until,
                                 now() + make_interval(secs => LEAST(GREATEST(p_seconds, 0), 3600)))
    FROM statuses AS s
    WHERE s.kind = p_kind AND s.name = p_name
      AND (p.kinds IS NULL OR s.kind = ANY(p.kinds)) AND (p.selector IS NULL OR s.labels @> p.selector)
      -- a rate policy narrowed to some kinds or labels: the model of one target's limit, not the whole fleet's
      AND p.max_per_minute IS NOT NULL AND (p.kinds IS NOT NULL OR p.selector IS NOT NULL);
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END $$;
"""
"""A target's 429 with Retry-After backs off every narrowed rate policy holding the resource (as of this revision:
0020 keeps the back-off in policy_statuses)."""
BACK_OFF_SIGNATURE = "setpoint_back_off(text, text, double precision)"


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table('policies',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('kinds', postgresql.ARRAY(sa.Text()), nullable=True),
    sa.Column('selector', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('max_in_flight', sa.Integer(), nullable=True),
    sa.Column('max_per_minute', sa.Integer(), nullable=True),
    sa.Column('burst', sa.Integer(), nullable=True),
    sa.Column('max_unready', sa.Integer(), nullable=True),
    sa.Column('max_failures', sa.Integer(), nullable=True),
    sa.Column('resumed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('tokens', sa.Float(), nullable=True),
    sa.Column('refilled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('backoff_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_policies_name_format')),
    sa.CheckConstraint("selector IS NULL OR jsonb_typeof(selector) = 'object'", name=op.f('ck_policies_selector_object')),
    sa.CheckConstraint('COALESCE(max_in_flight, max_per_minute, max_unready, max_failures) IS NOT NULL', name=op.f('ck_policies_limit_given')),
    sa.CheckConstraint('burst IS NULL OR burst >= 1', name=op.f('ck_policies_burst_positive')),
    sa.CheckConstraint('burst IS NULL OR max_per_minute IS NOT NULL', name=op.f('ck_policies_burst_with_rate')),
    sa.CheckConstraint('kinds IS NULL OR cardinality(kinds) >= 1', name=op.f('ck_policies_kinds_not_empty')),
    sa.CheckConstraint('max_failures IS NULL OR max_failures >= 1', name=op.f('ck_policies_max_failures_positive')),
    sa.CheckConstraint('max_in_flight IS NULL OR max_in_flight >= 1', name=op.f('ck_policies_max_in_flight_positive')),
    sa.CheckConstraint('max_per_minute IS NULL OR max_per_minute >= 1', name=op.f('ck_policies_max_per_minute_positive')),
    sa.CheckConstraint('max_unready IS NULL OR max_unready >= 1', name=op.f('ck_policies_max_unready_positive')),
    sa.CheckConstraint('pg_column_size(selector) <= 65536', name=op.f('ck_policies_selector_size')),
    sa.CheckConstraint('setpoint_jsonb_depth(selector, 16) <= 16', name=op.f('ck_policies_selector_depth')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_policies'))
    )
    op.add_column('statuses', sa.Column('claimed_generation', sa.Integer(), nullable=True))
    op.add_column('statuses', sa.Column('rollout_started_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('statuses', sa.Column('labels', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False))
    # ### end Alembic commands ###
    op.create_index('ix_statuses_busy', 'statuses', ['kind'], unique=False, postgresql_where=sa.text(
        'enqueued_at IS NOT NULL OR NOT ready OR observed_generation IS DISTINCT FROM generation'))
    op.drop_constraint(op.f('ck_statuses_phase_known'), 'statuses', type_='check')
    op.create_check_constraint(op.f('ck_statuses_phase_known'), 'statuses', f"phase IN ({PHASES_BEFORE}, 'Held')")
    op.execute(triggers.LABELS_FUNCTIONS)
    op.execute(triggers.TRACK_AS_OWNER)  # CREATE OR REPLACE reset it to SECURITY INVOKER
    op.execute(BACKFILL)
    op.execute(GRANTS)
    op.execute(HOLD_FUNCTION)
    op.execute(triggers.as_owner((HOLD_SIGNATURE,), "setpoint_scheduler"))
    op.execute(BACK_OFF_FUNCTION)
    op.execute(triggers.as_owner((BACK_OFF_SIGNATURE,), "setpoint_worker"))


def downgrade() -> None:
    op.execute(triggers.drop_functions((HOLD_SIGNATURE, BACK_OFF_SIGNATURE)))
    op.execute(REVOKE)
    op.execute(triggers.IDENTITY_FUNCTIONS)
    op.execute(triggers.TRACK_AS_OWNER)
    # What a held resource was before this phase existed: its new generation not yet started.
    op.execute("UPDATE statuses SET phase = 'Pending' WHERE phase = 'Held'")
    op.drop_constraint(op.f('ck_statuses_phase_known'), 'statuses', type_='check')
    op.create_check_constraint(op.f('ck_statuses_phase_known'), 'statuses', f"phase IN ({PHASES_BEFORE})")
    op.drop_index('ix_statuses_busy', table_name='statuses')
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_column('statuses', 'labels')
    op.drop_column('statuses', 'rollout_started_at')
    op.drop_column('statuses', 'claimed_generation')
    op.drop_table('policies')
    # ### end Alembic commands ###
