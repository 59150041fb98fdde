"""Strikes, quarantined artifacts, and the uses of servers on read-only roots.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A boot that hit an artifact and then failed; cleared once a later boot succeeded on it.
    op.create_table(
        "strike",
        sa.Column("uid", sa.String(), primary_key=True),
        sa.Column("layer", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("cleared", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_strike_key", "strike", ["key"])
    # An artifact moved out of its key's way, with the reasons and the sidecar it had.
    op.create_table(
        "quarantined",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("layer", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("artifact", sa.JSON(), nullable=True),
        sa.UniqueConstraint("layer", "name", name="uq_quarantined_layer_name"),
    )
    op.create_index("ix_quarantined_key", "quarantined", ["key"])
    # A server's use of an artifact on a root it cannot write (a read-only mount), renewed while it
    # lives: prune keeps what a live row names.
    op.create_table(
        "served",
        sa.Column("token", sa.String(), primary_key=True),
        sa.Column("layer", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_served_key", "served", ["key"])
    op.create_index("ix_served_expires_at", "served", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_served_expires_at", table_name="served")
    op.drop_index("ix_served_key", table_name="served")
    op.drop_table("served")
    op.drop_index("ix_quarantined_key", table_name="quarantined")
    op.drop_table("quarantined")
    op.drop_index("ix_strike_key", table_name="strike")
    op.drop_table("strike")
