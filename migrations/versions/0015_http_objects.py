"""http_objects: JSON objects kept at URLs of REST APIs, and where the objects created by POST were put

Table `http_objects` (the HTTPObject kind: url, create_url, body, headers naming a secret, timeout_seconds,
verify_tls), linked like every kind (its headers secret a dependency; url, create_url and body templated).
Table `http_object_locations` (uid -> url): the location an API answered a POST with, which the worker writes and
reads; a row deleted with deletion_policy 'orphan' forgets its location (a trigger running as its owner).

Revision ID: 0015
Revises: 0012
Create Date: 2026-12-01 22:29:28.479571
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql

from models import triggers

revision: str = '0015'
down_revision: Union[str, None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

FORGET = """
CREATE FUNCTION setpoint_http_object_orphaned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM http_object_locations WHERE uid = OLD.uid;  -- left behind on purpose: no longer ours to find
    RETURN NULL;
END $$;
CREATE TRIGGER setpoint_http_object_orphaned AFTER DELETE ON http_objects
    FOR EACH ROW WHEN (OLD.deletion_policy = 'orphan') EXECUTE FUNCTION setpoint_http_object_orphaned();
GRANT SELECT, INSERT, UPDATE, DELETE ON http_object_locations TO setpoint_worker;
GRANT SELECT ON http_object_locations TO setpoint_api;
"""


def upgrade() -> None:
    op.create_table('http_object_locations',
    sa.Column('uid', sa.Uuid(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('uid', name=op.f('pk_http_object_locations'))
    )
    op.create_table('http_objects',
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
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=True),
    sa.Column('create_url', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=True),
    sa.Column('body', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('headers', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=True),
    sa.Column('timeout_seconds', sa.Integer(), server_default=sa.text('10'), nullable=False),
    sa.Column('verify_tls', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.CheckConstraint("create_url IS NULL OR create_url ~* '^(https?://|\\{\\{)'", name=op.f('ck_http_objects_create_url_http')),
    sa.CheckConstraint("deletion_policy IN ('delete', 'orphan')", name=op.f('ck_http_objects_deletion_policy_known')),
    sa.CheckConstraint("headers IS NULL OR headers ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_http_objects_headers_name')),
    sa.CheckConstraint("jsonb_typeof(body) = 'object'", name=op.f('ck_http_objects_body_object')),
    sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name=op.f('ck_http_objects_labels_object')),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_http_objects_name_format')),
    sa.CheckConstraint("url IS NULL OR url ~* '^(https?://|\\{\\{)'", name=op.f('ck_http_objects_url_http')),
    sa.CheckConstraint('cardinality(depends_on) <= 64', name=op.f('ck_http_objects_depends_on_size')),
    sa.CheckConstraint('interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND 604800', name=op.f('ck_http_objects_interval_seconds_range')),
    sa.CheckConstraint('pg_column_size(body) <= 65536', name=op.f('ck_http_objects_body_size')),
    sa.CheckConstraint('pg_column_size(labels) <= 65536', name=op.f('ck_http_objects_labels_size')),
    sa.CheckConstraint('setpoint_jsonb_depth(body, 16) <= 16', name=op.f('ck_http_objects_body_depth')),
    sa.CheckConstraint('setpoint_jsonb_depth(labels, 16) <= 16', name=op.f('ck_http_objects_labels_depth')),
    sa.CheckConstraint('timeout_seconds BETWEEN 1 AND 30', name=op.f('ck_http_objects_timeout_seconds_range')),
    sa.CheckConstraint('url IS NOT NULL OR create_url IS NOT NULL', name=op.f('ck_http_objects_url_present')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_http_objects')),
    sa.UniqueConstraint('name', name=op.f('uq_http_objects_name'))
    )
    op.create_index(op.f('ix_http_objects_owned_by'), 'http_objects', ['owned_by'], unique=False)
    op.execute(triggers.attach("http_objects", "HTTPObject", templated=("url", "create_url", "body"),
                               secret_fields=("headers",)))
    op.execute(triggers.grant("http_objects"))
    op.execute(FORGET)
    op.execute(triggers.as_owner(("setpoint_http_object_orphaned()",), None))


def downgrade() -> None:
    op.execute("DELETE FROM statuses WHERE kind = 'HTTPObject'")
    op.execute("DELETE FROM dependencies WHERE kind = 'HTTPObject'")
    op.drop_index(op.f('ix_http_objects_owned_by'), table_name='http_objects')
    op.drop_table('http_objects')
    op.drop_table('http_object_locations')
    op.execute("DROP FUNCTION IF EXISTS setpoint_http_object_orphaned()")
