"""The change feed: one row per committed change, positioned in commit order after the commit.

Revision ID: 0004_change_feed
Revises: 0003_auth
Create Date: 2026-12-07 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_change_feed"
down_revision: str | Sequence[str] | None = "0003_auth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSTAMPED = sa.text("position IS NULL")
DELETED = sa.text("kind = 'deleted'")


def upgrade() -> None:
    """Create `change_feed`, its keyset and stamping indexes, and `change_feed_state` with its one row."""
    op.create_table(
        "change_feed",
        # BIGINT on PostgreSQL; SQLite's INTEGER PRIMARY KEY is its rowid.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        # NULL until the stamper gives it a place after its transaction committed (api/events/feed.py).
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("stamped_at", sa.DateTime(), nullable=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("resource", sa.String(16), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("invoice_day", sa.Date(), nullable=True),
        sa.Column("previous_invoice_day", sa.Date(), nullable=True),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_change_feed"),
    )
    # The feed's keyset read: WHERE position > :after ORDER BY position LIMIT :n.
    op.create_index("ix_change_feed_position", "change_feed", ["position"], unique=True)
    # The stamper's queue: only the rows without a position, in insertion order.
    op.create_index(
        "ix_change_feed_unstamped",
        "change_feed",
        ["id"],
        postgresql_where=UNSTAMPED,
        sqlite_where=UNSTAMPED,
    )
    # Which invoices a client deleted (`/bulk/invoices/compare` names them, so a source run does not post
    # them again unasked): the deletions of the numbers asked about.
    op.create_index(
        "ix_change_feed_deleted",
        "change_feed",
        ["resource", "resource_id"],
        postgresql_where=DELETED,
        sqlite_where=DELETED,
    )
    state = op.create_table(
        "change_feed_state",
        sa.Column("id", sa.Integer(), autoincrement=False),
        # The last position given out: positions never go back, even when retention empties the feed.
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        # Every position up to this one was deleted by retention: a cursor before it has expired.
        sa.Column("purged_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_change_feed_state"),
    )
    op.bulk_insert(state, [{"id": 1, "last_position": 0, "purged_through": 0}])


def downgrade() -> None:
    """Drop what `upgrade` created."""
    op.drop_table("change_feed_state")
    op.drop_index("ix_change_feed_deleted", table_name="change_feed")
    op.drop_index("ix_change_feed_unstamped", table_name="change_feed")
    op.drop_index("ix_change_feed_position", table_name="change_feed")
    op.drop_table("change_feed")
