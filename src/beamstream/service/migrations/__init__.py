"""Alembic migrations of the job store's schema; :func:`upgrade` brings a database to the newest revision.

A schema change is a new ``versions/NNNN_what.py`` after the last one (named in its
``down_revision``), with ``upgrade()`` and ``downgrade()`` and a docstring that says what
changes; :meth:`JobStore.open <beamstream.service.store.JobStore.open>` applies it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

HERE = Path(__file__).parent


def config() -> Config:
    """The Alembic configuration of these migrations (no alembic.ini: everything is set here)."""
    settings = Config()
    settings.set_main_option("script_location", str(HERE))
    return settings


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` to ``revision`` (creating the schema in a new database)."""
    settings = config()
    with engine.begin() as connection:
        settings.attributes["connection"] = connection
        command.upgrade(settings, revision)
