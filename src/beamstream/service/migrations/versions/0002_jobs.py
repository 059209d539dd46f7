"""Jobs: each stream's buffer and producer jobs, with the executor's native id to find them again.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("stream_id", sa.String(32), sa.ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("executor", sa.String(16), nullable=False),
        sa.Column("native_id", sa.String(256), nullable=False),
        sa.Column("directory", sa.Text, nullable=False),
        sa.Column("submitted", sa.Float, nullable=False),
        sa.Column("ended", sa.Float),
        sa.Column("outcome", sa.String(16)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("stop_requested", sa.Float),
    )
    op.create_index("ix_jobs_stream_id", "jobs", ["stream_id"])


def downgrade() -> None:
    op.drop_table("jobs")
