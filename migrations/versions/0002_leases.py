"""Build leases for fleets whose manifest is a server database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lease",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("layer", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False, index=True),
        sa.Column("process", sa.String(), nullable=False),
        sa.UniqueConstraint("layer", "key", name="uq_lease_layer_key"),
    )


def downgrade() -> None:
    op.drop_table("lease")
