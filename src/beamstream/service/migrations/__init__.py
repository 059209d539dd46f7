"""Alembic migrations of the job store's schema; :func:`upgrade` brings a database to the newest revision.

A schema change is a new ``versions/NNNN_what.py`` after the last one (named in its
``down_revision``), with ``upgrade()`` and ``downgrade()`` and a docstring that says what
changes. :meth:`JobStore.open <beamstream.service.store.JobStore.open>` creates the newest schema in a new
database, and refuses one at another revision (:func:`revision`): ``beamstream service upgrade-db`` applies the
migrations, once its operator has chosen to (and backed the database up).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
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


def head() -> str:
    """The newest revision of these migrations: the one this beamstream's models are."""
    return ScriptDirectory.from_config(config()).get_current_head()


def revision(engine: Engine) -> str | None:
    """The revision of the database behind ``engine``; None for a new database (no tables at all); ``""`` for
    one with tables but no revision recorded (not a job store, or made before migrations)."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None and inspect(connection).get_table_names():
            return ""
    return current


def known(revision_id: str) -> bool:
    """Whether ``revision_id`` is one of these migrations' (not one made by a newer beamstream)."""
    from alembic.util import CommandError

    try:
        return bool(revision_id) and ScriptDirectory.from_config(config()).get_revision(revision_id) is not None
    except CommandError:
        return False
