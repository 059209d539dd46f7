"""Tokens: short-lived bearer tokens (their SHA-256 digests, never the tokens), with identity, limits and expiry.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(256), nullable=False),
        sa.Column("experiments", sa.Text),
        sa.Column("stream", sa.String(32)),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("revoked", sa.Float),
    )
    op.create_index("ix_tokens_digest", "tokens", ["digest"], unique=True)
    op.create_index("ix_tokens_identity", "tokens", ["identity"])


def downgrade() -> None:
    op.drop_table("tokens")
