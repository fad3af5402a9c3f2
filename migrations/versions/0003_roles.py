"""roles: least privilege for workers, the scheduler and the API

Each process logs in as a user granted one of these NOLOGIN roles (or as the role itself, if a deployment
made it a LOGIN user before migrating: an existing role is used as it is). Workers write status and run
history but cannot change desired state; the API changes desired state (its triggers keep the status rows,
as their owner) but writes no status except `next_reconcile_at`, for "reconcile now"; the scheduler claims
due rows and prunes history.

Roles belong to the cluster, this migration to one database: roles are created only if missing, and a
downgrade revokes this database's grants but drops a role only if no other database uses it and nobody
logs in as it or through it. Later migrations: a new kind's table gets `triggers.grant(table)`; a new
statuses column the worker writes needs `GRANT UPDATE (column) ON statuses TO setpoint_worker`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:00:00.000000
"""
from typing import Sequence, Union

from alembic import op

from models import triggers

revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

PURPOSE = {
    "setpoint_worker": "Setpoint workers: read desired state, write status and run history.",
    "setpoint_scheduler": "Setpoint scheduler: claim due resources, prune run history.",
    "setpoint_api": "Setpoint API: change desired state, read status and history, make a resource due now.",
}

# What a reconcile writes in its status row (worker/store.py). Left out on purpose: the row's identity,
# `generation`, and the tombstone (`deleted_at`, `last_desired`), all desired state the triggers copy;
# and `claim`, which is the scheduler's.
WORKER_STATUS_COLUMNS = """observed_generation, ready, phase, conditions, observed, drift, consecutive_failures,
    last_error, last_reconcile_at, last_success_at, next_reconcile_at, interval_seconds, node, enqueued_at,
    picked_at"""

CORE_GRANTS = f"""
GRANT SELECT, DELETE ON statuses TO setpoint_worker;
GRANT UPDATE ({WORKER_STATUS_COLUMNS}) ON statuses TO setpoint_worker;
GRANT SELECT, INSERT ON runs TO setpoint_worker;
GRANT SELECT ON statuses TO setpoint_scheduler;
GRANT UPDATE (enqueued_at, claim) ON statuses TO setpoint_scheduler;
GRANT SELECT, DELETE ON runs TO setpoint_scheduler;
GRANT SELECT ON statuses, runs TO setpoint_api;
GRANT UPDATE (next_reconcile_at) ON statuses TO setpoint_api;
GRANT SELECT ON resource_status TO setpoint_worker, setpoint_scheduler, setpoint_api;
DO $$ BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO setpoint_worker', pg_get_serial_sequence('runs', 'id'));
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO setpoint_worker, setpoint_scheduler, setpoint_api',
                   current_schema());
END $$;
"""

REVOKE_CORE = """
REVOKE ALL ON statuses, runs, resource_status FROM setpoint_worker, setpoint_scheduler, setpoint_api;
DO $$ BEGIN
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM setpoint_worker', pg_get_serial_sequence('runs', 'id'));
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM setpoint_worker, setpoint_scheduler, setpoint_api',
                   current_schema());
END $$;
"""


def create_role(role: str, purpose: str) -> str:
    # Another database's migration may create it between our look and our CREATE: that is fine too.
    return f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
        CREATE ROLE {role} NOLOGIN;
        COMMENT ON ROLE {role} IS '{purpose}';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;
"""


def drop_role_if_unused(role: str) -> str:
    # A LOGIN role or one with members is a deployment's user, not ours to drop; grants in another
    # database keep it too (DROP ROLE refuses while any remain).
    return f"""
DO $$ BEGIN
    IF EXISTS (SELECT FROM pg_roles AS r WHERE r.rolname = '{role}' AND NOT r.rolcanlogin
               AND NOT EXISTS (SELECT FROM pg_auth_members AS m WHERE m.roleid = r.oid)) THEN
        DROP ROLE {role};
    END IF;
EXCEPTION WHEN dependent_objects_still_exist THEN
    NULL;
END $$;
"""


def upgrade() -> None:
    for role, purpose in PURPOSE.items():
        op.execute(create_role(role, purpose))
    op.execute(CORE_GRANTS)
    for table in ("files", "workloads"):
        op.execute(triggers.grant(table))
    op.execute(triggers.TRACK_AS_OWNER)


def downgrade() -> None:
    op.execute(triggers.TRACK_AS_CALLER)
    for table in ("files", "workloads"):
        op.execute(triggers.revoke(table))
    op.execute(REVOKE_CORE)
    for role in PURPOSE:
        op.execute(drop_role_if_unused(role))
