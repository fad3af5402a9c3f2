"""nodes: worker heartbeats, node names the database checks, and a worker role that cannot unmake status

A `nodes` row per worker node, heartbeated by its worker; the `Unknown` phase for resources on a silent node
(which the scheduler marks NodeLost through setpoint_mark_nodes_lost); CHECKs on every
column naming a node; and the worker's deletes and node pins moved into SECURITY DEFINER functions
(models.triggers.WORKER_FUNCTIONS), with DELETE on statuses and UPDATE of `node` revoked from the worker.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:20:00.000000
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

from models import triggers

revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NODE_FORMAT = "{column} IS NULL OR {column} ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{{0,252}}$'"
PHASES_BEFORE = "'Pending', 'Ready', 'Drifted', 'Degraded', 'Failed', 'Invalid', 'Deleting'"

GRANTS = """
GRANT SELECT, INSERT, UPDATE ON nodes TO setpoint_worker;
GRANT SELECT ON nodes TO setpoint_scheduler, setpoint_api;
REVOKE DELETE ON statuses FROM setpoint_worker;
REVOKE UPDATE (node) ON statuses FROM setpoint_worker;
"""

UNDO_GRANTS = """
GRANT DELETE ON statuses TO setpoint_worker;
GRANT UPDATE (node) ON statuses TO setpoint_worker;
"""


def _refuse_bad_node_names() -> None:
    """Name the rows whose node the new CHECKs would refuse, before adding them, and change nothing."""
    conn = op.get_bind()
    found = [
        f"{table} {name} (node {node!r})"
        for table, label in (("workloads", "name"), ("statuses", "kind || '/' || name"))
        for name, node in conn.execute(
            sa.text(f"SELECT {label}, node FROM {table} WHERE NOT ({NODE_FORMAT.format(column='node')}) "
                    "ORDER BY 1 LIMIT 20")
        ).all()
    ]
    if found:
        raise RuntimeError(
            "a node name must start with a letter or digit and hold only letters, digits, '_', '.' or '-' "
            f"(at most 253), and these rows name another: {'; '.join(found)}. Delete each such workload and "
            "insert it again with a valid node; unpin each such status (UPDATE statuses SET node = NULL WHERE "
            "node = '...': a worker pins it again), or delete it if its resource is gone; then upgrade again"
        )


def upgrade() -> None:
    _refuse_bad_node_names()
    op.create_table('nodes',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('worker', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.CheckConstraint("name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$'", name=op.f('ck_nodes_name_format')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_nodes'))
    )
    op.drop_constraint(op.f('ck_statuses_phase_known'), 'statuses', type_='check')
    op.create_check_constraint(
        op.f('ck_statuses_phase_known'), 'statuses', f"phase IN ({PHASES_BEFORE}, 'Unknown')"
    )
    op.create_check_constraint(op.f('ck_statuses_node_format'), 'statuses', NODE_FORMAT.format(column='node'))
    op.create_check_constraint(op.f('ck_workloads_node_format'), 'workloads', NODE_FORMAT.format(column='node'))
    op.execute(triggers.WORKER_FUNCTIONS)
    op.execute(triggers.as_owner(triggers.WORKER_FUNCTION_SIGNATURES, 'setpoint_worker'))
    op.execute(triggers.SCHEDULER_FUNCTIONS)
    op.execute(triggers.as_owner(triggers.SCHEDULER_FUNCTION_SIGNATURES, 'setpoint_scheduler'))
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(UNDO_GRANTS)
    op.execute(triggers.drop_functions(triggers.SCHEDULER_FUNCTION_SIGNATURES))
    op.execute(triggers.drop_functions(triggers.WORKER_FUNCTION_SIGNATURES))
    op.drop_constraint(op.f('ck_workloads_node_format'), 'workloads', type_='check')
    op.drop_constraint(op.f('ck_statuses_node_format'), 'statuses', type_='check')
    op.execute("UPDATE statuses SET phase = 'Pending' WHERE phase = 'Unknown'")
    op.drop_constraint(op.f('ck_statuses_phase_known'), 'statuses', type_='check')
    op.create_check_constraint(op.f('ck_statuses_phase_known'), 'statuses', f"phase IN ({PHASES_BEFORE})")
    op.drop_table('nodes')
