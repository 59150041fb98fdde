"""Housekeeping: what a snapshot depends on, per-artifact checksums, and pins.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifact") as batch:
        # Artifacts published before this revision depend on nothing and have no checksums.
        batch.add_column(sa.Column("depends_on", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("checksum", sa.String(), nullable=True))
    op.create_table(
        "pin",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pin")
    with op.batch_alter_table("artifact") as batch:
        batch.drop_column("checksum")
        batch.drop_column("depends_on")
