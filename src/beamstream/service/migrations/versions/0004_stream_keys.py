"""Stream keys: each stream's credentials (a StreamKey as text), given to its owner and its jobs only.

Streams requested before this revision have none (NULL): their jobs run without credentials.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("streams", sa.Column("stream_key", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("stream_key")
