"""inbox lookup: the events' wake-up trigger finds an earlier waiting event through the inbox's index, always

setpoint_events_waiting() looks for the latest event still waiting in the inbox before the ones a statement added.
Planned while the inbox's statistics said it was empty (after a publish and an autoanalyze), that lookup was a full
scan and a sort, cached for the session: each event of a mass rollout read the whole inbox, so an insert cost 0.4 ms
at 1,000 waiting events and 1.5 ms at 6,000 (measured), growing until the next publish. The function now plans with
sequential scans off: through the primary key, 0.3 ms whatever the inbox holds.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-02 05:45:00
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0021'
down_revision: str | None = '0020'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER FUNCTION setpoint_events_waiting() SET enable_seqscan = off")


def downgrade() -> None:
    op.execute("ALTER FUNCTION setpoint_events_waiting() RESET enable_seqscan")
