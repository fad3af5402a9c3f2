"""secrets: values the worker reads and nobody else sees, whose change makes their referrers due

Table `secrets` (name, value, a short digest computed by the database, times). The worker's role reads values;
the API's role writes them and reads everything else (column privileges); the scheduler's, nothing. A value
changed, a secret made or removed: every resource that refers to it (a column naming it, `{{ Secret/NAME }}`
in a templated field: both are `dependencies` rows on `Secret/NAME`) is due at once.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 22:45:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

from models import secret, triggers

revision: str = '0012'
down_revision: Union[str, None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('secrets',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("name ~ '^[a-z0-9]([-a-z0-9_.]{0,251}[a-z0-9])?$'", name=op.f('ck_secrets_name_format')),
    sa.CheckConstraint('octet_length(value) <= 65536', name=op.f('ck_secrets_value_size')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_secrets'))
    )
    op.execute(secret.SECRET_FUNCTIONS)
    op.execute(triggers.as_owner(secret.SECRET_AS_OWNER, None))


def downgrade() -> None:
    op.execute(secret.DROP_SECRET_FUNCTIONS)
    op.drop_table('secrets')
