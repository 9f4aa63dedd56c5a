"""log_records: a partial index for warnings and errors instead of a btree on level

Most records are INFO/DEBUG, so a btree on ``level`` was large, almost never selective, and cost
every insert an index update (about 1.5 us of PostgreSQL CPU per record, docs/benchmarks.md). The
partial index holds only records at WARNING (30) or above, which is what ``sagews logs --level
WARNING|ERROR`` asks for, newest first.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 15:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("level >= 30")


def upgrade() -> None:
    op.drop_index("ix_log_records_level", table_name="log_records")
    op.create_index(
        "ix_log_records_problems", "log_records", ["id"], postgresql_where=_WHERE, sqlite_where=_WHERE
    )


def downgrade() -> None:
    op.drop_index("ix_log_records_problems", table_name="log_records")
    op.create_index("ix_log_records_level", "log_records", ["level"], unique=False)
