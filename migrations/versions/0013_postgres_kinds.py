"""postgres kinds: PostgresRole, PostgresDatabase and PostgresGrant on servers named by secrets

Tables postgres_roles, postgres_databases (deletion_policy 'orphan' by default: a database holds data) and
postgres_grants, each a kind (triggers.attach) whose `server` (and a role's `password`) name secrets, so a missing
secret makes it wait and a changed one makes it due. A database depends on its owner's PostgresRole and a grant on
its role's and database's when those are Setpoint resources (models/postgres.py LINKS).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 22:28:47.211946
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql

from models import postgres, triggers

revision: str = '0013'
down_revision: Union[str, None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

KINDS = (("postgres_roles", "PostgresRole"), ("postgres_databases", "PostgresDatabase"),
         ("postgres_grants", "PostgresGrant"))


def upgrade() -> None:
    op.create_table('postgres_databases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('uid', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('generation', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('interval_seconds', sa.Integer(), nullable=True),
    sa.Column('paused', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('deletion_policy', sqlmodel.sql.sqltypes.AutoString(length=16), server_default=sa.text("'orphan'"), nullable=False),
    sa.Column('depends_on', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
    sa.Column('owned_by', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
    sa.Column('labels', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('server', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('external_name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True),
    sa.Column('encoding', sqlmodel.sql.sqltypes.AutoString(length=32), server_default=sa.text("'UTF8'"), nullable=False),
    sa.Column('template', sqlmodel.sql.sqltypes.AutoString(length=63), server_default=sa.text("'template0'"), nullable=False),
    sa.Column('extensions', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
    sa.CheckConstraint("deletion_policy IN ('delete', 'orphan')", name=op.f('ck_postgres_databases_deletion_policy_known')),
    sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name=op.f('ck_postgres_databases_labels_object')),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_postgres_databases_name_format')),
    sa.CheckConstraint("server ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_postgres_databases_server_format')),
    sa.CheckConstraint('cardinality(depends_on) <= 64', name=op.f('ck_postgres_databases_depends_on_size')),
    sa.CheckConstraint('cardinality(extensions) <= 64', name=op.f('ck_postgres_databases_extensions_size')),
    sa.CheckConstraint('external_name IS NOT NULL OR octet_length(name) <= 63', name=op.f('ck_postgres_databases_name_length')),
    sa.CheckConstraint('external_name IS NULL OR octet_length(external_name) BETWEEN 1 AND 63', name=op.f('ck_postgres_databases_external_name_length')),
    sa.CheckConstraint('interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND 604800', name=op.f('ck_postgres_databases_interval_seconds_range')),
    sa.CheckConstraint('pg_column_size(labels) <= 65536', name=op.f('ck_postgres_databases_labels_size')),
    sa.CheckConstraint('setpoint_jsonb_depth(labels, 16) <= 16', name=op.f('ck_postgres_databases_labels_depth')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_postgres_databases')),
    sa.UniqueConstraint('name', name=op.f('uq_postgres_databases_name'))
    )
    op.create_index(op.f('ix_postgres_databases_owned_by'), 'postgres_databases', ['owned_by'], unique=False)
    op.create_table('postgres_grants',
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
    sa.Column('server', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.Column('database', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.Column('privileges', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
    sa.Column('schema_name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('table_privileges', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
    sa.CheckConstraint("deletion_policy IN ('delete', 'orphan')", name=op.f('ck_postgres_grants_deletion_policy_known')),
    sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name=op.f('ck_postgres_grants_labels_object')),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_postgres_grants_name_format')),
    sa.CheckConstraint("server ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_postgres_grants_server_format')),
    sa.CheckConstraint('cardinality(depends_on) <= 64', name=op.f('ck_postgres_grants_depends_on_size')),
    sa.CheckConstraint('cardinality(privileges) <= 16', name=op.f('ck_postgres_grants_privileges_size')),
    sa.CheckConstraint('cardinality(table_privileges) <= 16', name=op.f('ck_postgres_grants_table_privileges_size')),
    sa.CheckConstraint('interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND 604800', name=op.f('ck_postgres_grants_interval_seconds_range')),
    sa.CheckConstraint('pg_column_size(labels) <= 65536', name=op.f('ck_postgres_grants_labels_size')),
    sa.CheckConstraint('schema_name IS NOT NULL OR cardinality(table_privileges) = 0', name=op.f('ck_postgres_grants_table_privileges_schema')),
    sa.CheckConstraint('setpoint_jsonb_depth(labels, 16) <= 16', name=op.f('ck_postgres_grants_labels_depth')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_postgres_grants')),
    sa.UniqueConstraint('name', name=op.f('uq_postgres_grants_name'))
    )
    op.create_index(op.f('ix_postgres_grants_owned_by'), 'postgres_grants', ['owned_by'], unique=False)
    op.create_table('postgres_roles',
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
    sa.Column('server', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('external_name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('login', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('password', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=True),
    sa.Column('createdb', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('createrole', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('connection_limit', sa.Integer(), server_default=sa.text('-1'), nullable=False),
    sa.Column('valid_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('member_of', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
    sa.CheckConstraint("deletion_policy IN ('delete', 'orphan')", name=op.f('ck_postgres_roles_deletion_policy_known')),
    sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name=op.f('ck_postgres_roles_labels_object')),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_postgres_roles_name_format')),
    sa.CheckConstraint("password IS NULL OR password ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_postgres_roles_password_format')),
    sa.CheckConstraint("server ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_postgres_roles_server_format')),
    sa.CheckConstraint('cardinality(depends_on) <= 64', name=op.f('ck_postgres_roles_depends_on_size')),
    sa.CheckConstraint('cardinality(member_of) <= 64', name=op.f('ck_postgres_roles_member_of_size')),
    sa.CheckConstraint('connection_limit >= -1', name=op.f('ck_postgres_roles_connection_limit_range')),
    sa.CheckConstraint('external_name IS NOT NULL OR octet_length(name) <= 63', name=op.f('ck_postgres_roles_name_length')),
    sa.CheckConstraint('external_name IS NULL OR octet_length(external_name) BETWEEN 1 AND 63', name=op.f('ck_postgres_roles_external_name_length')),
    sa.CheckConstraint('interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND 604800', name=op.f('ck_postgres_roles_interval_seconds_range')),
    sa.CheckConstraint('pg_column_size(labels) <= 65536', name=op.f('ck_postgres_roles_labels_size')),
    sa.CheckConstraint('setpoint_jsonb_depth(labels, 16) <= 16', name=op.f('ck_postgres_roles_labels_depth')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_postgres_roles')),
    sa.UniqueConstraint('name', name=op.f('uq_postgres_roles_name'))
    )
    op.create_index(op.f('ix_postgres_roles_owned_by'), 'postgres_roles', ['owned_by'], unique=False)
    for table, kind in KINDS:
        model = {m.__tablename__: m for m in (postgres.PostgresRole, postgres.PostgresDatabase, postgres.PostgresGrant)}[table]
        op.execute(triggers.attach(table, kind, templated=model.templated, secret_fields=model.secret_fields))
        op.execute(triggers.grant(table))
    op.execute(postgres.LINKS)
    op.execute(triggers.as_owner(postgres.LINKS_AS_OWNER, None))


def downgrade() -> None:
    op.execute("DELETE FROM statuses WHERE kind IN ('PostgresRole', 'PostgresDatabase', 'PostgresGrant')")
    op.execute(postgres.DROP_LINKS)
    op.drop_index(op.f('ix_postgres_roles_owned_by'), table_name='postgres_roles')
    op.drop_table('postgres_roles')
    op.drop_index(op.f('ix_postgres_grants_owned_by'), table_name='postgres_grants')
    op.drop_table('postgres_grants')
    op.drop_index(op.f('ix_postgres_databases_owned_by'), table_name='postgres_databases')
    op.drop_table('postgres_databases')
