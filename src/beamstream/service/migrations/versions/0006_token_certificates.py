"""Token certificates: the serial number of the client certificate each token was minted with, so that revoking
the certificate revokes its tokens. Tokens minted before this revision have none (they live until they expire).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tokens", sa.Column("certificate", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("certificate")
