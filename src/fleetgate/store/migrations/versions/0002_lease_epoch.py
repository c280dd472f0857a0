"""Fenced leases: ``leases.epoch``, the fencing token checked inside every driver's append.

Existing rows get epoch 0; the next acquire of each starts epoch 1. Written out in full so this
revision never changes once shipped.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN (no table rebuild) on both backends; NOT NULL needs the server default.
    op.add_column("leases", sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("epoch")
