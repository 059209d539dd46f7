"""The first schema: streams and the history of their state changes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("experiment", sa.String(256)),
        sa.Column("run", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("resources", sa.Text, nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("endpoints", sa.Text),
        sa.Column("verdict", sa.Text),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_index("ix_streams_owner", "streams", ["owner"])
    op.create_index("ix_streams_experiment", "streams", ["experiment"])
    op.create_index("ix_streams_state", "streams", ["state"])
    op.create_index("ix_streams_created", "streams", ["created"])
    op.create_table(
        "state_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("stream_id", sa.String(32), sa.ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_state_changes_stream_id", "state_changes", ["stream_id"])


def downgrade() -> None:
    op.drop_table("state_changes")
    op.drop_table("streams")
