"""Deployments wait as data: ``wake_at`` (store clock) is when a parked deployment (a soak
between two samples) is due again; NULL means runnable now or waiting for a human.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("wake_at", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("wake_at")
