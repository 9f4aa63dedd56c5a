"""accounts: per-account caps on open workspaces and stored bytes; workspaces.deleted_at for the purge

``accounts.max_open_workspaces`` and ``accounts.max_stored_bytes`` (NULL: the backend's configured
defaults) are set with ``sagews admin limits`` or ``POST /api/admin/accounts/<name>/limits``.
``workspaces.deleted_at`` is when a workspace was deleted; its rows and bundles are purged
``purge_after_days`` later. Workspaces deleted before this migration count from their ``updated``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as b:
        b.add_column(sa.Column("max_open_workspaces", sa.Integer(), nullable=True))
        b.add_column(sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("workspaces") as b:
        b.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        b.create_index(b.f("ix_workspaces_deleted_at"), ["deleted_at"], unique=False)
    op.execute("UPDATE workspaces SET deleted_at = updated WHERE deleted")


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as b:
        b.drop_index(b.f("ix_workspaces_deleted_at"))
        b.drop_column("deleted_at")
    with op.batch_alter_table("accounts") as b:
        b.drop_column("max_stored_bytes")
        b.drop_column("max_open_workspaces")
