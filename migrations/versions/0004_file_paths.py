"""file paths: one File per path, and every path in one spelling

Two Files managing one path rewrote it in turn forever while both reported Ready: the path is now unique,
and normalized (no '//', no '.' or '..' part, no trailing '/') so that two spellings of one path cannot both
be stored; at most 2,048 bytes long, within what a unique index holds. Rows that break a rule stop the
upgrade, named, for an admin to fix first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 19:10:00.000000
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NORMALIZED = r"path !~ '(//|/\.\.?(/|$)|/$)'"
SHORT = "octet_length(path) <= 2048"


def _refuse(query: str, problem: str) -> None:
    rows = op.get_bind().execute(sa.text(query)).all()
    if rows:
        listed = "; ".join(f"{row[0]} ({row[1]})" for row in rows)
        raise RuntimeError(f"{problem}; fix these files rows, then upgrade again: {listed}")


def upgrade() -> None:
    _refuse(
        f"SELECT path, name FROM files WHERE NOT ({NORMALIZED}) ORDER BY name LIMIT 20",
        "files.path must be normalized (no '//', no '.' or '..' part, no trailing '/')",
    )
    _refuse(
        f"SELECT left(path, 60) || '…', name FROM files WHERE NOT ({SHORT}) ORDER BY name LIMIT 20",
        "files.path must be at most 2048 bytes (what a unique index holds)",
    )
    _refuse(
        "SELECT path, string_agg(name, ', ' ORDER BY name) FROM files GROUP BY path HAVING count(*) > 1 "
        "ORDER BY path LIMIT 20",
        "files.path must be unique (two Files at one path rewrite it in turn forever)",
    )
    op.create_check_constraint(op.f('ck_files_path_normalized'), 'files', sa.text(NORMALIZED))
    op.create_check_constraint(op.f('ck_files_path_length'), 'files', sa.text(SHORT))
    op.create_unique_constraint(op.f('uq_files_path'), 'files', ['path'])


def downgrade() -> None:
    op.drop_constraint(op.f('uq_files_path'), 'files', type_='unique')
    op.drop_constraint(op.f('ck_files_path_length'), 'files', type_='check')
    op.drop_constraint(op.f('ck_files_path_normalized'), 'files', type_='check')
