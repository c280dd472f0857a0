"""The quarantine list: devices a deployment set aside, until ``registry release``.

Kept apart from the ``devices`` rows on purpose: an inventory import replaces every device row,
and a quarantine must survive that (a device left out of one import and listed again in the
next comes back quarantined, not in service). Written out in full so this revision never
changes once shipped.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("deployment_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quarantine")
