"""Alembic's entry point: runs the migrations on the connection :func:`beamstream.service.migrations.upgrade` gives."""

from __future__ import annotations

from alembic import context

from beamstream.service.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
