"""The job store holds every stream's key and callback secret: its files are private, and the secrets in it are
sealed under a service key kept outside it, so that a copy of the database alone opens nothing (issue 17, item 2)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from beamstream.security.streamkey import StreamKey, StreamKeyError
from beamstream.service.app import create_app
from beamstream.service.at_rest import ServiceKey, ServiceKeyError
from beamstream.service.migrations import upgrade
from beamstream.service.settings import ServiceSettings
from beamstream.service.store import JobStore, StoreError

SPEC = {"source": {"type": "simulated", "n_events": 4}}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_0022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_store_and_the_service_key_are_made_private_under_a_permissive_umask(tmp_path, umask_0022):
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path / 'service.db'}", state_dir=tmp_path / "state")
    app = create_app(settings)
    with TestClient(app) as api:
        assert api.post("/v1/streams", json={"spec": SPEC}).status_code == 201
        files = [tmp_path / name for name in ("service.db", "service.db-wal", "service.db-shm")]
        assert all(file.exists() for file in files)
        assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
        assert mode(tmp_path / "state" / "service.key") == 0o600
        assert mode(tmp_path / "state") == 0o700
    app.state.context.store.close()


@pytest.mark.parametrize("loose", ["service.db", "service.db-wal"])
def test_a_store_others_may_read_stops_the_service_saying_what_to_do(tmp_path, loose):
    JobStore.open(f"sqlite:///{tmp_path / 'service.db'}").close()
    (tmp_path / loose).touch()
    (tmp_path / loose).chmod(0o644)
    with pytest.raises(StoreError, match=rf"job store file .*{loose} may be read .*chmod 600 .*{loose}"):
        JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
    started = subprocess.run([sys.executable, "-m", "beamstream.cli", "service", "--port", "0", "--database-url",
                              f"sqlite:///{tmp_path / 'service.db'}", "--state-dir", str(tmp_path / "state")],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 1 and f"chmod 600 {tmp_path / loose}" in " ".join(started.stderr.split())


def test_a_service_key_others_may_read_is_refused(tmp_path):
    ServiceKey.from_file(tmp_path / "service.key")
    (tmp_path / "service.key").chmod(0o640)
    with pytest.raises(ServiceKeyError, match="may be read or changed by others .* chmod 600"):
        ServiceKey.from_file(tmp_path / "service.key")


def test_a_copy_of_the_database_alone_opens_no_stream(tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    key = ServiceKey.from_file(tmp_path / "service.key")
    store = JobStore.open(url, key)
    record = store.create(owner="alice", spec=SPEC, resources={})
    assert StreamKey.from_text(record.key) and len(record.secret) == 64
    store.close()
    dump = b"".join(path.read_bytes() for path in tmp_path.glob("service.db*"))
    assert record.key.encode() not in dump and record.secret.encode() not in dump
    with sqlite3.connect(tmp_path / "service.db") as database:
        stored_key, stored_secret = database.execute("SELECT stream_key, secret FROM streams").fetchone()
    with pytest.raises(StreamKeyError):
        StreamKey.from_text(stored_key)
    assert stored_secret != record.secret
    with pytest.raises(ServiceKeyError, match="does not open with a service key held in memory"):
        JobStore.open(url, ServiceKey.generate()).get(record.id)
    with sqlite3.connect(tmp_path / "service.db") as database:  # a sealed value moved to another column opens not
        database.execute("UPDATE streams SET secret = stream_key")
    with pytest.raises(ServiceKeyError):
        JobStore.open(url, key).get(record.id)


def test_secrets_kept_in_clear_by_an_older_release_are_sealed_when_the_store_is_opened(tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    engine = create_engine(url)
    upgrade(engine, "0004")
    clear_key = StreamKey.generate().to_text()
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO streams (id, owner, state, spec, resources, secret, stream_key, created, updated) "
            f"VALUES ('s1', 'alice', 'queued', '{{}}', '{{}}', '{'ab' * 32}', '{clear_key}', 0, 0)")
    engine.dispose()
    for file in tmp_path.glob("service.db*"):  # as an operator does when the new release says so
        file.chmod(0o600)
    key = ServiceKey.from_file(tmp_path / "service.key")
    store = JobStore.open(url, key, upgrade=True)  # as `beamstream service upgrade-db` does
    assert store.get("s1").key == clear_key and store.get("s1").secret == "ab" * 32
    store.close()
    assert clear_key.encode() not in b"".join(path.read_bytes() for path in tmp_path.glob("service.db*"))


def test_two_transitions_at_once_never_lose_one(tmp_path):
    """A cancel and a callback's 'running' made at the same moment on SQLite: whichever way they interleave, a
    cancel that was accepted is the stream's last state (never overwritten by a transition checked before it)."""
    import threading

    from beamstream.protocol.states import State, TransitionError

    store = JobStore.open(f"sqlite:///{tmp_path / 'service.db'}")
    outcomes = []
    for _ in range(40):
        record = store.create(owner="alice", spec=SPEC, resources={})
        store.change_state(record.id, State.STARTING, "buffer job submitted")
        ready = threading.Barrier(2)
        accepted = {}

        def move(state: State) -> None:
            ready.wait()
            try:
                store.change_state(record.id, state, "at once")
                accepted[state] = True
            except TransitionError:
                accepted[state] = False

        threads = [threading.Thread(target=move, args=(state,)) for state in (State.RUNNING, State.CANCELLED)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = store.get(record.id)
        outcomes.append((accepted[State.CANCELLED], final.state, [change.state for change in final.history]))
    store.close()
    assert all(state is State.CANCELLED for cancelled, state, _ in outcomes if cancelled), outcomes
    assert all(history[-1] is state for _, state, history in outcomes)
