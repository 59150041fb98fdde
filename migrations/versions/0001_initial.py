"""Artifacts, observed fingerprints, events and journal cursors.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifact",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(), nullable=False, unique=True),
        sa.Column("layer", sa.String(), nullable=False, index=True),
        sa.Column("model", sa.String(), nullable=False, index=True),
        sa.Column("relpath", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=False, index=True),
        sa.Column("builder", sa.String(), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
    )
    op.create_table(
        "observation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(), nullable=False, unique=True),
        sa.Column("gpu_type", sa.String(), nullable=False, index=True),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("first_seen_at", sa.Float(), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False, index=True),
        sa.Column("seen", sa.Integer(), nullable=False),
    )
    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uid", sa.String(), nullable=False, unique=True),
        sa.Column("at", sa.Float(), nullable=False, index=True),
        sa.Column("kind", sa.String(), nullable=False, index=True),
        sa.Column("layer", sa.String(), nullable=True),
        sa.Column("key", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("host", sa.String(), nullable=True),
    )
    op.create_table(
        "journal_cursor",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("journal_cursor")
    op.drop_table("event")
    op.drop_table("observation")
    op.drop_table("artifact")
