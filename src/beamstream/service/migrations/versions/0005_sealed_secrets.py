"""Sealed secrets: a stream's callback secret and key are kept encrypted under the service key
(beamstream.service.at_rest), longer than their clear text: both columns become TEXT.

The values already there are sealed by the store when it is next opened with the service key. SQLite does not
bound a VARCHAR's length, so its tables stay as they are (rebuilding them would cascade deletes of the history).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    with op.batch_alter_table("streams") as batch:
        batch.alter_column("secret", type_=sa.Text(), existing_type=sa.String(64), existing_nullable=False)
        batch.alter_column("stream_key", type_=sa.Text(), existing_type=sa.String(64), existing_nullable=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    with op.batch_alter_table("streams") as batch:
        batch.alter_column("secret", type_=sa.String(64), existing_type=sa.Text(), existing_nullable=False)
        batch.alter_column("stream_key", type_=sa.String(64), existing_type=sa.Text(), existing_nullable=True)
