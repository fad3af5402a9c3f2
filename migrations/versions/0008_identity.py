"""identity: a uid per resource, copied into its status and runs; not ready until the generation is observed

Every kind's table (the built-in ones and any a user attached with `triggers.attach`) gets `uid`, assigned
by the database at INSERT and immutable (models.triggers.IDENTITY_FUNCTIONS); statuses and runs carry it, so
a name deleted and used again starts with an empty history. Existing runs are given the uid of the resource
that now holds their name if they started after it was created; older ones stay NULL (an earlier life's),
which retention treats as they were before. resource_status gains `uid`, and `ready` is false while the
current generation has not been observed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 20:00:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from models import triggers

revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

KINDS = """
SELECT t.tgrelid::regclass::text AS desired,
       convert_from(substring(t.tgargs FROM 1 FOR length(t.tgargs) - 1), 'UTF8') AS kind
FROM pg_trigger AS t WHERE t.tgfoid = 'setpoint_track'::regproc AND t.tgnargs = 1 ORDER BY 1
"""
"""Every table the status trigger makes a kind of, with its kind's name: files, workloads and users' own."""

ROLES = "setpoint_worker, setpoint_scheduler, setpoint_api"


def _kinds() -> list[tuple[str, str]]:
    return [(row.desired, row.kind) for row in op.get_bind().execute(sa.text(KINDS))]


def upgrade() -> None:
    kinds = _kinds()
    for desired, _ in kinds:
        op.execute(f"ALTER TABLE {desired} ADD COLUMN uid uuid DEFAULT gen_random_uuid() NOT NULL")
    op.add_column('statuses', sa.Column('uid', sa.Uuid(), nullable=True))
    op.add_column('runs', sa.Column('uid', sa.Uuid(), nullable=True))
    bind = op.get_bind()
    for desired, kind in kinds:
        params = {"kind": kind}
        bind.execute(sa.text(f"UPDATE statuses AS s SET uid = d.uid FROM {desired} AS d "
                             "WHERE s.kind = :kind AND s.name = d.name"), params)
        bind.execute(sa.text(f"UPDATE runs AS r SET uid = d.uid FROM {desired} AS d "
                             "WHERE r.kind = :kind AND r.name = d.name AND r.started_at >= d.created_at"), params)
    # Tombstones (and statuses left without a row) get a uid of their own, their runs since their row's creation too.
    op.execute("UPDATE statuses SET uid = gen_random_uuid() WHERE uid IS NULL")
    op.execute("""
UPDATE runs AS r SET uid = s.uid FROM statuses AS s
WHERE r.uid IS NULL AND s.deleted_at IS NOT NULL AND r.kind = s.kind AND r.name = s.name
  AND r.started_at >= (s.last_desired ->> 'created_at')::timestamptz
""")
    op.alter_column('statuses', 'uid', nullable=False)
    op.execute(triggers.IDENTITY_FUNCTIONS)
    op.execute(triggers.TRACK_AS_OWNER)  # CREATE OR REPLACE reset it to SECURITY INVOKER
    op.execute(triggers.IDENTITY_VIEW)


def downgrade() -> None:
    op.execute(triggers.DROP_STATUS_VIEW)
    op.execute(triggers.STATUS_VIEW)
    op.execute(f"GRANT SELECT ON resource_status TO {ROLES}")
    op.execute(triggers.FUNCTIONS)
    op.execute(triggers.TRACK_AS_OWNER)
    op.drop_column('runs', 'uid')
    op.drop_column('statuses', 'uid')
    for desired, _ in _kinds():
        op.execute(f"ALTER TABLE {desired} DROP COLUMN uid")
