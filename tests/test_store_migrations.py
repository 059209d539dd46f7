"""The job store's schema: the ORM models are exactly what the migrations make, and a store at another revision is
refused with what to do, until ``beamstream service upgrade-db`` migrates it (SQLite and PostgreSQL alike)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import String, Text, create_engine, text

from beamstream.service import migrations
from beamstream.service.at_rest import ServiceKey
from beamstream.service.store import JobStore, StoreError
from beamstream.service.tables import Base
from conftest import run_cli

SPEC = {"source": {"type": "simulated", "n_events": 10}}


def test_the_models_are_what_the_migrations_make(database_url):
    """Types included; but SQLite, which does not bound a VARCHAR's length, keeps the columns that migration 0005
    made TEXT elsewhere as they were (rebuilding its tables would cascade deletes of the history)."""
    JobStore.open(database_url).close()
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": _same_type})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def _same_type(context, inspected_column, metadata_column, inspected_type, metadata_type):  # noqa: ANN001, ANN202
    """Alembic's own comparison, but a SQLite VARCHAR is the same as TEXT."""
    if context.dialect.name == "sqlite" and isinstance(inspected_type, String) and isinstance(metadata_type, Text):
        return False
    return None


def test_an_older_store_is_refused_until_upgrade_db_migrates_it_keeping_its_streams(database_url, tmp_path):
    engine = _engine(database_url)
    migrations.upgrade(engine, "0005")  # as the beamstream before token certificates left it
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO streams (id, owner, state, spec, resources, secret, created, updated) "
                                "VALUES ('0123456789abcdef', 'alice', 'queued', '{}', '{}', 's', 0, 0)"))
    engine.dispose()
    with pytest.raises(StoreError) as refused:
        JobStore.open(database_url)
    assert "at schema revision 0005" in str(refused.value) and "beamstream service upgrade-db" in str(refused.value)
    settings = ["--database-url", database_url]
    key = ["--config", str(_config(tmp_path))]
    migrated = run_cli("service", "upgrade-db", *settings, *key)
    assert migrated.returncode == 0, migrated.stderr
    assert f"migrated from 0005 to schema revision {migrations.head()}" in " ".join(migrated.stderr.split())
    again = run_cli("service", "upgrade-db", *settings, *key)
    assert again.returncode == 0 and "already at schema revision" in again.stderr
    store = JobStore.open(database_url, ServiceKey.from_file(tmp_path / "state" / "service.key"))
    try:
        assert store.get("0123456789abcdef").owner == "alice"
    finally:
        store.close()


def test_a_store_of_a_newer_beamstream_or_another_program_is_refused(database_url):
    engine = _engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('9999_from_the_future')"))
    with pytest.raises(StoreError, match="which this beamstream does not know"):
        JobStore.open(database_url, upgrade=True)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text("CREATE TABLE samples (id INTEGER)"))
    engine.dispose()
    with pytest.raises(StoreError, match="not a beamstream job store"):
        JobStore.open(database_url)


def _config(folder):
    """A settings file whose service key lies in ``folder`` (upgrade-db opens the store with it)."""
    path = folder / "service.yaml"
    path.write_text(f"state_dir: {folder / 'state'}\n")
    return path


def _engine(database_url):
    """An engine on ``database_url``; a SQLite file made private first, as the store wants it."""
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).touch(mode=0o600)
    return create_engine(database_url)
