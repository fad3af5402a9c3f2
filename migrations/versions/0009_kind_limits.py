"""kind limits: users' own kinds get the limits 0005 gave files and workloads

A kind's table created before 0005 (any table with the status trigger) kept unlimited labels and intervals,
so one row there could still make every read of its kind fail. Each such table gets the CHECK constraints
that `models.base.common_constraints` gives a kind's table created today, under the same names: labels at
most 16 levels deep and 64 KiB, an interval from 1 s to a week. As in 0005, intervals above a week are
clamped to a week, and a row over another limit stops the upgrade with its table and name, to be fixed by
hand. A constraint the table already has (by name) is left alone; the ones added here carry a comment, so
the downgrade drops those and nothing a kind's own CreateTable made.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 20:30:00.000000
"""
import dataclasses
import hashlib
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0009'
down_revision: Union[str, None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

WEEK = 604800

RULES = {  # as models.base.common_constraints names them: rule -> (the column it guards, its CHECK)
    "interval_seconds_range": ("interval_seconds", f"interval_seconds IS NULL OR interval_seconds BETWEEN 1 AND {WEEK}"),
    "labels_depth": ("labels", "setpoint_jsonb_depth(labels, 16) <= 16"),
    "labels_size": ("labels", "pg_column_size(labels) <= 65536"),
}

MARK = "added by Setpoint migration 0009 (kind limits); its downgrade drops it"
"""The comment on each constraint this migration adds: what its downgrade drops, and only that."""

COLUMNS = """
SELECT c.oid::regclass::text AS target, c.relname, a.attname, a.atttypid = 'jsonb'::regtype AS jsonb,
       array(SELECT conname::text FROM pg_constraint WHERE conrelid = c.oid) AS constraints
FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.oid IN (SELECT tgrelid FROM pg_trigger WHERE tgfoid = 'setpoint_track'::regproc)
  AND a.attname IN ('labels', 'interval_seconds')
ORDER BY 1, 3
"""
"""The limited columns of every table the status trigger makes a kind of (as 0008 finds them), with the names
of the constraints each table already has."""

ADDED = """
SELECT conrelid::regclass::text AS target, conname FROM pg_constraint
WHERE contype = 'c' AND obj_description(oid, 'pg_constraint') = :mark ORDER BY 1, 2
"""


@dataclasses.dataclass(frozen=True)
class Limit:
    """One CHECK constraint a kind's table lacks."""

    table: str
    """The table as SQL names it (regclass: schema-qualified and quoted where needed)."""
    name: str
    rule: str
    sql: str


def constraint_name(relname: str, rule: str) -> str:
    """The name the naming convention gives (`ck_<table>_<rule>`), shortened as SQLAlchemy shortens it for
    PostgreSQL's 63 characters, so a constraint a newer CreateTable made is recognised."""
    name = f"ck_{relname}_{rule}"
    return name if len(name) <= 63 else f"{name[:55]}_{hashlib.md5(name.encode()).hexdigest()[-4:]}"


def _missing(bind: sa.Connection) -> list[Limit]:
    missing = []
    for row in bind.execute(sa.text(COLUMNS)):
        for rule, (column, sql) in RULES.items():
            name = constraint_name(row.relname, rule)
            if column == row.attname and name not in row.constraints and (row.jsonb or column != "labels"):
                missing.append(Limit(row.target, name, rule, sql))
    return missing


def upgrade() -> None:
    bind = op.get_bind()
    quote = bind.dialect.identifier_preparer.quote
    missing = _missing(bind)
    for table in sorted({limit.table for limit in missing if limit.rule == "interval_seconds_range"}):
        op.execute(f"UPDATE {table} SET interval_seconds = {WEEK} WHERE interval_seconds > {WEEK}")
    refused = []
    for limit in missing:
        offending = bind.execute(
            sa.text(f"SELECT name FROM {limit.table} WHERE NOT ({limit.sql}) ORDER BY name LIMIT 10")
        ).scalars().all()
        if offending:
            refused.append(
                f"{limit.table} {', '.join(offending)}: {limit.rule.replace('_', ' ')} is over its limit ({limit.sql})"
            )
    if refused:  # before any constraint is added; the transaction takes back the clamped intervals too
        raise RuntimeError("; ".join(refused) + "; fix or delete these rows, then migrate again")
    for limit in missing:
        op.execute(f"ALTER TABLE {limit.table} ADD CONSTRAINT {quote(limit.name)} CHECK ({limit.sql})")
        op.execute(f"COMMENT ON CONSTRAINT {quote(limit.name)} ON {limit.table} IS '{MARK}'")


def downgrade() -> None:
    bind = op.get_bind()
    quote = bind.dialect.identifier_preparer.quote
    for table, name in bind.execute(sa.text(ADDED), {"mark": MARK}).all():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {quote(name)}")
