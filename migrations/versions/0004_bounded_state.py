"""Bounded, clock-safe state: sightings judged by the observer's own clock, and daily summaries of
old events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # When an observer (a host running prune, sync, check) first saw a record (a use, a lease, an
    # unfinished build) in its present form, by that observer's clock: a record is dead only once
    # it has not changed for a TTL of the same observer's time.
    op.create_table(
        "sighting",
        sa.Column("observer", sa.String(), primary_key=True),
        sa.Column("thing", sa.String(), primary_key=True),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("first_seen_at", sa.Float(), nullable=False),
    )
    # Events older than the retention window, counted per day.
    op.create_table(
        "event_summary",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("day", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("layer", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.UniqueConstraint("day", "kind", "layer", "model", name="uq_event_summary"),
    )


def downgrade() -> None:
    op.drop_table("event_summary")
    op.drop_table("sighting")
