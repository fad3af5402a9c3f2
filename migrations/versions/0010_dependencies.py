"""dependencies: depends_on and owned_by on every kind, outputs in status, the dependency graph, phase Waiting

Every kind's table (the built-in ones and any a user attached with `triggers.attach`) gets `depends_on`
(text[], references stored as `Kind/name`) and `owned_by`, and the link triggers of models/links.py: references
spelled canonically, the `dependencies` table kept from them (and from references to outputs in the templated
fields of files and workloads), cycles refused. `statuses` gains `outputs`, which the worker writes; a resource
becoming ready or changing its outputs makes its dependents due at once. Phase `Waiting` and run outcome
`waiting` are for a resource whose dependencies are not ready yet.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 22:30:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql

from models import links, triggers
from models.base import MAX_DEPENDENCIES

revision: str = '0010'
down_revision: Union[str, None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

KINDS = """
SELECT t.tgrelid::regclass::text AS desired, c.relname::text AS relname,
       convert_from(substring(t.tgargs FROM 1 FOR length(t.tgargs) - 1), 'UTF8') AS kind
FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
WHERE t.tgfoid = 'setpoint_track'::regproc AND t.tgnargs = 1 ORDER BY 1
"""
"""Every table the status trigger makes a kind of, with its kind's name (as 0008 finds them)."""

TEMPLATED = {"files": ("content",), "workloads": ("command", "env")}
"""The built-in kinds' fields that may reference outputs (models.file.File.templated, models.workload.Workload)."""

PHASES_BEFORE = "'Pending', 'Ready', 'Drifted', 'Degraded', 'Failed', 'Invalid', 'Deleting', 'Unknown', 'Progressing'"
OUTCOMES_BEFORE = "'noop', 'changed', 'failed', 'invalid', 'paused', 'deleted'"
ROLES = "setpoint_worker, setpoint_scheduler, setpoint_api"


def _kinds() -> list[tuple[str, str, str]]:
    return [(row.desired, row.relname, row.kind) for row in op.get_bind().execute(sa.text(KINDS))]


MARK = "added by Setpoint migration 0010 (dependencies); its downgrade drops it"
WITH_COLUMNS = MARK + ", and depends_on and owned_by"
"""The comment on the constraint this migration adds to a kind's table, saying whether it added the columns too:
a user's kind created from today's models.base.Resource has them already, from its own CreateTable, and the
downgrade leaves those (a comment on the columns themselves would show in every `alembic check`)."""

HAS = """
SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attname = 'depends_on'
               AND NOT attisdropped) AS columns,
       EXISTS (SELECT FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) AND conname = :c) AS size
"""

ADDED = """
SELECT conname::text AS name, obj_description(oid, 'pg_constraint') = :with_columns AS columns FROM pg_constraint
WHERE conrelid = CAST(:t AS regclass) AND obj_description(oid, 'pg_constraint') IN (:mark, :with_columns)
"""


def _add_columns(desired: str, relname: str) -> None:
    has = op.get_bind().execute(sa.text(HAS), {"t": desired, "c": f"ck_{relname}_depends_on_size"}).one()
    if not has.columns:
        op.execute(f"ALTER TABLE {desired} ADD COLUMN depends_on text[] DEFAULT '{{}}'::text[] NOT NULL, "
                   "ADD COLUMN owned_by varchar(320)")
    if not has.size:
        op.execute(f"ALTER TABLE {desired} ADD CONSTRAINT ck_{relname}_depends_on_size "
                   f"CHECK (cardinality(depends_on) <= {MAX_DEPENDENCIES})")
        mark = MARK if has.columns else WITH_COLUMNS
        op.execute(f"COMMENT ON CONSTRAINT ck_{relname}_depends_on_size ON {desired} IS '{mark}'")


def _drop_columns(desired: str) -> None:
    params = {"t": desired, "mark": MARK, "with_columns": WITH_COLUMNS}
    for added in op.get_bind().execute(sa.text(ADDED), params).all():
        op.execute(f"ALTER TABLE {desired} DROP CONSTRAINT {added.name}")
        if added.columns:
            op.execute(f"ALTER TABLE {desired} DROP COLUMN depends_on, DROP COLUMN owned_by")


def upgrade() -> None:
    kinds = _kinds()
    for desired, relname, _ in kinds:
        _add_columns(desired, relname)
    op.create_table('dependencies',
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('on_kind', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('on_name', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'name', 'on_kind', 'on_name', name=op.f('pk_dependencies'))
    )
    op.create_index('ix_dependencies_on', 'dependencies', ['on_kind', 'on_name'], unique=False)
    op.add_column('statuses', sa.Column('outputs', postgresql.JSONB(astext_type=sa.Text()),
                                        server_default=sa.text("'{}'::jsonb"), nullable=False))
    op.drop_constraint(op.f('ck_statuses_phase_known'), 'statuses', type_='check')
    op.create_check_constraint(op.f('ck_statuses_phase_known'), 'statuses', f"phase IN ({PHASES_BEFORE}, 'Waiting')")
    op.drop_constraint(op.f('ck_runs_outcome_known'), 'runs', type_='check')
    op.create_check_constraint(op.f('ck_runs_outcome_known'), 'runs', f"outcome IN ({OUTCOMES_BEFORE}, 'waiting')")
    op.execute(links.functions(MAX_DEPENDENCIES))
    op.execute(triggers.as_owner(links.AS_OWNER, None))
    for desired, relname, kind in kinds:
        op.execute(links.detach(desired) + links.attach(desired, kind, TEMPLATED.get(relname, ())))
    op.execute(f"GRANT SELECT ON dependencies TO {ROLES}")
    op.execute("GRANT UPDATE (outputs) ON statuses TO setpoint_worker")


def downgrade() -> None:
    op.execute("REVOKE UPDATE (outputs) ON statuses FROM setpoint_worker")
    kinds = _kinds()
    for desired, _, _ in kinds:
        op.execute(links.detach(desired))
    op.execute(links.DROP_FUNCTIONS)
    op.execute("UPDATE runs SET outcome = 'paused' WHERE outcome = 'waiting'")  # observed, not acted on
    op.drop_constraint(op.f('ck_runs_outcome_known'), 'runs', type_='check')
    op.create_check_constraint(op.f('ck_runs_outcome_known'), 'runs', f"outcome IN ({OUTCOMES_BEFORE})")
    op.execute("UPDATE statuses SET phase = 'Pending' WHERE phase = 'Waiting'")
    op.drop_constraint(op.f('ck_statuses_phase_known'), 'statuses', type_='check')
    op.create_check_constraint(op.f('ck_statuses_phase_known'), 'statuses', f"phase IN ({PHASES_BEFORE})")
    op.drop_column('statuses', 'outputs')
    op.drop_index('ix_dependencies_on', table_name='dependencies')
    op.drop_table('dependencies')
    for desired, _, _ in kinds:
        _drop_columns(desired)
