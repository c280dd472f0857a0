"""Self-enrolment: one-time enrolment tokens (hashed), the devices' public keys, and when each
device was last seen.

Written out in full so this revision never changes once shipped.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrol_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("group_name", sa.String(128), nullable=False),
        sa.Column("auto_accept", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("expires_at", sa.String(40), nullable=False),
        sa.Column("used_at", sa.String(40), nullable=True),
        sa.Column("used_by", sa.String(128), nullable=True),
        sa.Column("revoked_at", sa.String(40), nullable=True),
    )
    op.create_table(
        "device_keys",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("enrolled_at", sa.String(40), nullable=False),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("last_seen", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("last_seen")
    op.drop_table("device_keys")
    op.drop_table("enrol_tokens")
