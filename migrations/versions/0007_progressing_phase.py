"""statuses: the `Progressing` phase, for a workload starting or rolling out (`Degraded` is for health failing)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 19:45:00.000000
"""
from typing import Sequence, Union

from alembic import op

revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

PHASES_BEFORE = "'Pending', 'Ready', 'Drifted', 'Degraded', 'Failed', 'Invalid', 'Deleting', 'Unknown'"


def upgrade() -> None:
    op.drop_constraint(op.f('ck_statuses_phase_known'), 'statuses', type_='check')
    op.create_check_constraint(
        op.f('ck_statuses_phase_known'), 'statuses', f"phase IN ({PHASES_BEFORE}, 'Progressing')"
    )


def downgrade() -> None:
    # What a rollout in progress was called before this phase existed.
    op.execute("UPDATE statuses SET phase = 'Degraded' WHERE phase = 'Progressing'")
    op.drop_constraint(op.f('ck_statuses_phase_known'), 'statuses', type_='check')
    op.create_check_constraint(op.f('ck_statuses_phase_known'), 'statuses', f"phase IN ({PHASES_BEFORE})")
