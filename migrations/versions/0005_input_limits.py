"""input limits: JSON columns stay readable, intervals at most a week, workload env as a process can hold it

Every client reads what any client (or an admin's SQL) wrote, so the database refuses what it could not
serve back: labels (and a workload's env) nested more than 16 levels deep or larger than 64 KiB, an interval
above a week (604800 s), env variables a process environment cannot hold. Existing intervals above a week are
clamped to a week; an existing row over another limit stops the upgrade with its name, to be fixed by hand.

Two IMMUTABLE functions serve the CHECK constraints (and any kind's table, through models.base):
`setpoint_jsonb_depth(j, deepest)` walks no deeper than `deepest + 1` levels, so a hostile value costs no
more than a legal one; `setpoint_env_valid(env)` checks each name and value.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:10:00.000000
"""
from typing import Sequence, Union

from alembic import op
from sqlalchemy import text

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

WEEK = 604800

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION setpoint_jsonb_depth(j jsonb, deepest integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    -- Objects and arrays count one level each (a scalar is 0); the walk stops at deepest + 1.
    WITH RECURSIVE level(value, depth) AS (
        SELECT j, 1 WHERE jsonb_typeof(j) IN ('object', 'array')
        UNION ALL
        SELECT inner_value, level.depth + 1
        FROM level,
        LATERAL (
            SELECT value FROM jsonb_each(CASE WHEN jsonb_typeof(level.value) = 'object'
                                              THEN level.value ELSE '{}'::jsonb END)
            UNION ALL
            SELECT value FROM jsonb_array_elements(CASE WHEN jsonb_typeof(level.value) = 'array'
                                                        THEN level.value ELSE '[]'::jsonb END)
        ) AS inner_values(inner_value)
        WHERE jsonb_typeof(inner_value) IN ('object', 'array') AND level.depth <= deepest
    )
    SELECT coalesce(max(depth), 0) FROM level
$$;
COMMENT ON FUNCTION setpoint_jsonb_depth(jsonb, integer) IS
    'How deeply j nests objects and arrays (a scalar: 0), counted no further than deepest + 1.';

CREATE OR REPLACE FUNCTION setpoint_env_valid(env jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(env) <> 'object' THEN false ELSE NOT EXISTS (
        SELECT 1 FROM jsonb_each(env) AS variable(name, value)
        WHERE variable.name !~ '^[A-Za-z_][A-Za-z0-9_]*$' OR jsonb_typeof(variable.value) NOT IN ('string', 'number')
    ) END
$$;
COMMENT ON FUNCTION setpoint_env_valid(jsonb) IS
    'Whether env is an object of variables named [A-Za-z_][A-Za-z0-9_]*, each a string or a number.';
"""

LIMITS = {
    "files": {
        "labels_depth": "setpoint_jsonb_depth(labels, 16) <= 16",
        "labels_size": "pg_column_size(labels) <= 65536",
        "interval_seconds_range": f"interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND {WEEK}",
    },
    "workloads": {
        "labels_depth": "setpoint_jsonb_depth(labels, 16) <= 16",
        "labels_size": "pg_column_size(labels) <= 65536",
        "interval_seconds_range": f"interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND {WEEK}",
        "env_valid": "setpoint_env_valid(env)",
        "env_depth": "setpoint_jsonb_depth(env, 16) <= 16",
        "env_size": "pg_column_size(env) <= 65536",
    },
}


def upgrade() -> None:
    op.execute(FUNCTIONS)
    conn = op.get_bind()
    for table, checks in LIMITS.items():
        op.execute(f"UPDATE {table} SET interval_seconds = {WEEK} WHERE interval_seconds > {WEEK}")
        for name, sql in checks.items():
            offending = conn.execute(text(f"SELECT name FROM {table} WHERE NOT ({sql}) ORDER BY name LIMIT 10")).scalars().all()
            if offending:
                raise RuntimeError(
                    f"{table} {', '.join(offending)}: {name.replace('_', ' ')} is over its limit ({sql}); "
                    "fix or delete these rows, then migrate again"
                )
        op.drop_constraint(op.f(f"ck_{table}_interval_seconds_positive"), table, type_="check")
        for name, sql in checks.items():
            op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, sql)


def downgrade() -> None:
    for table, checks in LIMITS.items():
        for name in checks:
            op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
        op.create_check_constraint(
            op.f(f"ck_{table}_interval_seconds_positive"), table, "interval_seconds IS NULL OR interval_seconds > 0"
        )
    op.execute("DROP FUNCTION setpoint_env_valid(jsonb); DROP FUNCTION setpoint_jsonb_depth(jsonb, integer);")
