"""mysql kinds: MySQLUser, MySQLDatabase and MySQLGrant, on MySQL/MariaDB servers named by secrets

Tables `mysql_users` (server, external_name, host, password), `mysql_databases` (server, external_name,
character_set, collation_name; deletion_policy 'orphan' by default: a database holds data) and `mysql_grants` (server,
user_name, host, database, privileges; one row per account and database). `server` and `password` name secrets,
so a missing one makes the resource wait and a changed one makes it due at once. The columns that name the real
object cannot change once the row exists (models/mysql.py).

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-01 22:28:49.947588
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql

from models import mysql, triggers

revision: str = '0014'
down_revision: Union[str, None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

KINDS = (("mysql_users", mysql.MySQLUser), ("mysql_databases", mysql.MySQLDatabase), ("mysql_grants", mysql.MySQLGrant))


def upgrade() -> None:
    op.create_table('mysql_databases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('uid', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('generation', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('interval_seconds', sa.Integer(), nullable=True),
    sa.Column('paused', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('depends_on', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
    sa.Column('owned_by', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
    sa.Column('labels', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('server', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('external_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('character_set', sqlmodel.sql.sqltypes.AutoString(length=64), server_default=sa.text("'utf8mb4'"), nullable=False),
    sa.Column('collation_name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('deletion_policy', sqlmodel.sql.sqltypes.AutoString(length=16), server_default=sa.text("'orphan'"), nullable=False),
    sa.CheckConstraint("deletion_policy IN ('delete', 'orphan')", name=op.f('ck_mysql_databases_deletion_policy_known')),
    sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name=op.f('ck_mysql_databases_labels_object')),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_mysql_databases_name_format')),
    sa.CheckConstraint('cardinality(depends_on) <= 64', name=op.f('ck_mysql_databases_depends_on_size')),
    sa.CheckConstraint('interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND 604800', name=op.f('ck_mysql_databases_interval_seconds_range')),
    sa.CheckConstraint('pg_column_size(labels) <= 65536', name=op.f('ck_mysql_databases_labels_size')),
    sa.CheckConstraint('setpoint_jsonb_depth(labels, 16) <= 16', name=op.f('ck_mysql_databases_labels_depth')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mysql_databases')),
    sa.UniqueConstraint('name', name=op.f('uq_mysql_databases_name'))
    )
    op.create_index(op.f('ix_mysql_databases_owned_by'), 'mysql_databases', ['owned_by'], unique=False)
    op.create_table('mysql_grants',
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
    sa.Column('user_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('host', sqlmodel.sql.sqltypes.AutoString(length=255), server_default=sa.text("'%'"), nullable=False),
    sa.Column('database', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('privileges', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.CheckConstraint("deletion_policy IN ('delete', 'orphan')", name=op.f('ck_mysql_grants_deletion_policy_known')),
    sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name=op.f('ck_mysql_grants_labels_object')),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_mysql_grants_name_format')),
    sa.CheckConstraint('cardinality(depends_on) <= 64', name=op.f('ck_mysql_grants_depends_on_size')),
    sa.CheckConstraint('interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND 604800', name=op.f('ck_mysql_grants_interval_seconds_range')),
    sa.CheckConstraint('pg_column_size(labels) <= 65536', name=op.f('ck_mysql_grants_labels_size')),
    sa.CheckConstraint('setpoint_jsonb_depth(labels, 16) <= 16', name=op.f('ck_mysql_grants_labels_depth')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mysql_grants')),
    sa.UniqueConstraint('name', name=op.f('uq_mysql_grants_name')),
    sa.UniqueConstraint('server', 'user_name', 'host', 'database', name='uq_mysql_grants_account_database')
    )
    op.create_index(op.f('ix_mysql_grants_owned_by'), 'mysql_grants', ['owned_by'], unique=False)
    op.create_table('mysql_users',
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
    sa.Column('external_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('host', sqlmodel.sql.sqltypes.AutoString(length=255), server_default=sa.text("'%'"), nullable=False),
    sa.Column('password', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=True),
    sa.CheckConstraint("deletion_policy IN ('delete', 'orphan')", name=op.f('ck_mysql_users_deletion_policy_known')),
    sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name=op.f('ck_mysql_users_labels_object')),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_mysql_users_name_format')),
    sa.CheckConstraint('cardinality(depends_on) <= 64', name=op.f('ck_mysql_users_depends_on_size')),
    sa.CheckConstraint('interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND 604800', name=op.f('ck_mysql_users_interval_seconds_range')),
    sa.CheckConstraint('pg_column_size(labels) <= 65536', name=op.f('ck_mysql_users_labels_size')),
    sa.CheckConstraint('setpoint_jsonb_depth(labels, 16) <= 16', name=op.f('ck_mysql_users_labels_depth')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mysql_users')),
    sa.UniqueConstraint('name', name=op.f('uq_mysql_users_name'))
    )
    op.create_index(op.f('ix_mysql_users_owned_by'), 'mysql_users', ['owned_by'], unique=False)
    op.execute(mysql.IMMUTABLE_SQL)
    for table, kind in KINDS:
        op.execute(triggers.attach(table, kind.kind, secret_fields=kind.secret_fields))
        op.execute(mysql.immutable(table))
        op.execute(triggers.grant(table))


def downgrade() -> None:
    for table, kind in reversed(KINDS):
        op.execute(f"DELETE FROM statuses WHERE kind = '{kind.kind}'")
        op.drop_table(table)
    op.execute("DROP FUNCTION IF EXISTS setpoint_mysql_immutable()")
