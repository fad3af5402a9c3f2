"""ownership: owned_by deletes at any depth (foreground) or orphans, the worker writes owned rows only, App

Every kind's table gets the ownership triggers of models/ownership.py: deleting an owner whose deletion_policy
is 'orphan' clears the owned rows' `owned_by`; an owned row edited or deleted by someone makes its owner due
at once. `setpoint_delete_owned(owner)` is the worker's foreground deletion (it deletes the rows an owner being
torn down owns, and says which are still being torn down). Row-level security on every kind's table lets the
worker's role insert, update and delete owned rows, and no others. The built-in composite kind App (table `apps`)
owns a Workload and a File per config file (controllers/app.py).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 22:06:39.801880
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql

from models import ownership, triggers

revision: str = '0011'
down_revision: Union[str, None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

KINDS = """
SELECT t.tgrelid::regclass::text AS desired,
       convert_from(substring(t.tgargs FROM 1 FOR length(t.tgargs) - 1), 'UTF8') AS kind
FROM pg_trigger AS t
WHERE t.tgfoid = 'setpoint_track'::regproc AND t.tgnargs = 1 ORDER BY 1
"""
"""Every table the status trigger makes a kind of, with its kind's name (as 0010 finds them)."""


def _kinds() -> list[tuple[str, str]]:
    return [(row.desired, row.kind) for row in op.get_bind().execute(sa.text(KINDS))]


def upgrade() -> None:
    op.execute(ownership.FUNCTIONS)
    op.execute(triggers.as_owner(ownership.AS_OWNER, None))
    op.execute(triggers.as_owner(ownership.WORKER_FUNCTIONS, "setpoint_worker"))
    for desired, kind in _kinds():
        op.execute(ownership.detach(desired) + ownership.attach(desired, kind) + ownership.grant(desired))
    op.create_table('apps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('uid', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('generation', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('interval_seconds', sa.Integer(), nullable=True),
    sa.Column('paused', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('deletion_policy', sqlmodel.sql.sqltypes.AutoString(length=16), server_default=sa.text("'delete'"), nullable=False),
    sa.Column('depends_on', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
    sa.Column('owned_by', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
    sa.Column('labels', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('command', sqlmodel.sql.sqltypes.AutoString(length=8192), nullable=False),
    sa.Column('replicas', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('env', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('files', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('health_command', sqlmodel.sql.sqltypes.AutoString(length=8192), nullable=True),
    sa.Column('health_url', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=True),
    sa.CheckConstraint("deletion_policy IN ('delete', 'orphan')", name=op.f('ck_apps_deletion_policy_known')),
    sa.CheckConstraint("health_url IS NULL OR health_url ~ '^https?://'", name=op.f('ck_apps_health_url_http')),
    sa.CheckConstraint("jsonb_typeof(env) = 'object'", name=op.f('ck_apps_env_object')),
    sa.CheckConstraint("jsonb_typeof(files) = 'object'", name=op.f('ck_apps_files_object')),
    sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name=op.f('ck_apps_labels_object')),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_apps_name_format')),
    sa.CheckConstraint('NOT jsonb_path_exists(files, \'$.keyvalue() ? (!(@.key starts with "/") || @.value.type() != "string")\')', name=op.f('ck_apps_files_paths')),
    sa.CheckConstraint('cardinality(depends_on) <= 64', name=op.f('ck_apps_depends_on_size')),
    sa.CheckConstraint('health_command IS NULL OR health_url IS NULL', name=op.f('ck_apps_health_command_or_url')),
    sa.CheckConstraint('interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND 604800', name=op.f('ck_apps_interval_seconds_range')),
    sa.CheckConstraint('length(btrim(command)) > 0', name=op.f('ck_apps_command_present')),
    sa.CheckConstraint('length(name) <= 240', name=op.f('ck_apps_name_length')),
    sa.CheckConstraint('pg_column_size(env) <= 65536', name=op.f('ck_apps_env_size')),
    sa.CheckConstraint('pg_column_size(files) <= 65536', name=op.f('ck_apps_files_size')),
    sa.CheckConstraint('pg_column_size(labels) <= 65536', name=op.f('ck_apps_labels_size')),
    sa.CheckConstraint('replicas >= 0 AND replicas <= 1000', name=op.f('ck_apps_replicas_range')),
    sa.CheckConstraint('setpoint_env_valid(env)', name=op.f('ck_apps_env_valid')),
    sa.CheckConstraint('setpoint_jsonb_depth(env, 16) <= 16', name=op.f('ck_apps_env_depth')),
    sa.CheckConstraint('setpoint_jsonb_depth(files, 16) <= 16', name=op.f('ck_apps_files_depth')),
    sa.CheckConstraint('setpoint_jsonb_depth(labels, 16) <= 16', name=op.f('ck_apps_labels_depth')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_apps')),
    sa.UniqueConstraint('name', name=op.f('uq_apps_name'))
    )
    op.execute(triggers.attach("apps", "App"))
    op.execute(triggers.grant("apps"))


def downgrade() -> None:
    op.execute("DELETE FROM statuses WHERE kind = 'App'")
    op.drop_table('apps')
    for desired, _ in _kinds():
        op.execute(ownership.detach(desired) + ownership.revoke(desired))
        op.execute(f"REVOKE INSERT, UPDATE, DELETE ON {desired} FROM setpoint_worker")
        op.execute(f"""DO $$ BEGIN
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM setpoint_worker', pg_get_serial_sequence('{desired}', 'id'));
END $$""")
    op.execute(ownership.DROP_FUNCTIONS)
