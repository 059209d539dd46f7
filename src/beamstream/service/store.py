"""The job store: every stream the service was asked for, its state, and the history of its state changes.

SQLAlchemy 2 over any database it speaks: a SQLite file by default, PostgreSQL by URL
(``postgresql+psycopg://user@host/db``); its tables are :mod:`beamstream.service.tables`. :meth:`JobStore.open`
gives a new database the newest schema (the Alembic migrations in :mod:`beamstream.service.migrations`) and
refuses one at an older revision until ``beamstream service upgrade-db`` migrates it. Every change is one
transaction: a service killed at any moment leaves each stream in a state it really had, with the history that
led there.

Times are seconds since the Unix epoch (float), UTC.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from beamstream.service.at_rest import ServiceKey, is_sealed
from beamstream.service.notifier import Notifier
from beamstream.service.tables import ChangeRow, JobRow, StreamRow, TokenRow
from beamstream.protocol.states import State, check_transition
from beamstream.service.tokens import Grant


def _grant(row: TokenRow) -> Grant:
    experiments = None if row.experiments is None else tuple(json.loads(row.experiments))
    return Grant(id=row.id, identity=row.identity, experiments=experiments, stream=row.stream, created=row.created,
                 expires=row.expires, revoked=row.revoked, certificate=row.certificate)


@dataclass(frozen=True, slots=True)
class Job:
    """One job of a stream, as the store holds it."""

    id: int
    stream_id: str
    role: str
    executor: str
    native_id: str
    directory: str
    submitted: float
    ended: float | None
    outcome: str | None
    exit_code: int | None
    stop_requested: float | None

    @classmethod
    def of(cls, row: JobRow) -> Job:
        return cls(id=row.id, stream_id=row.stream_id, role=row.role, executor=row.executor,
                   native_id=row.native_id, directory=row.directory, submitted=row.submitted, ended=row.ended,
                   outcome=row.outcome, exit_code=row.exit_code, stop_requested=row.stop_requested)


@dataclass(frozen=True, slots=True)
class Change:
    """One state change: the new state, why, and when."""

    state: State
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """A stream as the store holds it."""

    id: str
    owner: str
    name: str | None
    experiment: str | None
    run: int | None
    state: State
    spec: dict[str, Any]
    resources: dict[str, Any]
    secret: str
    endpoints: dict[str, Any] | None
    verdict: dict[str, Any] | None
    created: float
    updated: float
    history: list[Change]
    # the stream's credentials (StreamKey text; None for a stream requested before the service made them): for
    # its owner and its jobs only, never in a view, a repr or a log
    key: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, row: StreamRow, service_key: ServiceKey) -> StreamRecord:
        """The record of ``row``, its secrets opened with ``service_key``."""
        key = None if row.stream_key is None else service_key.open(row.stream_key, f"streams.{row.id}.stream_key")
        return cls(id=row.id, owner=row.owner, name=row.name, experiment=row.experiment, run=row.run,
                   state=State(row.state), spec=json.loads(row.spec), resources=json.loads(row.resources),
                   secret=service_key.open(row.secret, f"streams.{row.id}.secret"), endpoints=_loads(row.endpoints),
                   verdict=_loads(row.verdict), created=row.created, updated=row.updated, key=key,
                   history=[Change(State(change.state), change.reason, change.at) for change in row.changes])


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class StreamNotFound(LookupError):
    """No stream with that id (or none its asker may see)."""


class StoreError(Exception):
    """A job store that may not be used as it is; the message names the file and what to do."""


def _not_at_head(engine: Engine, found: str, newest: str, known: bool) -> str:
    """Why the job store behind ``engine``, at revision ``found``, is not used by a beamstream at ``newest``."""
    where = engine.url.render_as_string(hide_password=True)
    if not found:
        return (f"the database {where} has tables but is not a beamstream job store (no schema revision): give the "
                "service a database of its own (database_url)")
    if not known:
        return (f"the job store {where} is at schema revision {found}, which this beamstream does not know (a newer "
                "one made it): run the newer beamstream, or give this one another database")
    return (f"the job store {where} is at schema revision {found}; this beamstream needs {newest}: back it up, then "
            "run `beamstream service upgrade-db` (with the service's settings) to migrate it")


class JobStore:
    """The streams and their histories in one database; safe to share between threads. Each stream's key and
    callback secret are kept sealed under ``service_key`` (:mod:`beamstream.service.at_rest`; default: a key held
    in memory, so that what this store writes only it can open). Each state change it makes is told to those
    who watch the stream (``changes``: :class:`~beamstream.service.notifier.Notifier`)."""

    def __init__(self, engine: Engine, service_key: ServiceKey | None = None) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.service_key = service_key or ServiceKey.generate()
        self.changes = Notifier()

    @classmethod
    def open(cls, url: str, service_key: ServiceKey | None = None, *, upgrade: bool = False) -> JobStore:
        """The store at ``url``, every secret in it sealed under ``service_key``; a new database is given the
        newest schema. One at an older revision is migrated only with ``upgrade`` (``beamstream service
        upgrade-db``); without, StoreError saying so, as for one made by a newer beamstream or that is not a job
        store. A SQLite file is created readable and writable by its owner only; StoreError for one (or its
        journal) that others may read, since it holds every stream's key."""
        from beamstream.service import migrations

        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            _private_sqlite_file(engine.url.database)
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin_immediate)
        try:
            found, newest = migrations.revision(engine), migrations.head()
            if found is None or found != newest and upgrade and migrations.known(found):
                migrations.upgrade(engine)
            elif found != newest:
                raise StoreError(_not_at_head(engine, found, newest, migrations.known(found)))
        except BaseException:
            engine.dispose()
            raise
        store = cls(engine, service_key)
        store._seal_clear_secrets()
        return store

    def _seal_clear_secrets(self) -> None:
        """Seal the secrets written before the store sealed them (no prefix)."""
        with self._session() as session:
            for row in session.scalars(select(StreamRow)):
                if not is_sealed(row.secret):
                    row.secret = self.service_key.seal(row.secret, f"streams.{row.id}.secret")
                if row.stream_key is not None and not is_sealed(row.stream_key):
                    row.stream_key = self.service_key.seal(row.stream_key, f"streams.{row.id}.stream_key")

    def _record(self, row: StreamRow) -> StreamRecord:
        return StreamRecord.of(row, self.service_key)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def create(self, *, owner: str, spec: dict[str, Any], resources: dict[str, Any], name: str | None = None,
               experiment: str | None = None, run: int | None = None, reason: str = "requested") -> StreamRecord:
        """A new stream in state ``queued``, with its first history entry, a fresh callback secret and fresh
        credentials (a :class:`~beamstream.security.streamkey.StreamKey`, kept as text: ``record.key``)."""
        from beamstream.security.streamkey import StreamKey

        now = time.time()
        stream_id = uuid.uuid4().hex
        secret = self.service_key.seal(secrets.token_hex(32), f"streams.{stream_id}.secret")
        key = self.service_key.seal(StreamKey.generate().to_text(), f"streams.{stream_id}.stream_key")
        row = StreamRow(id=stream_id, owner=owner, name=name, experiment=experiment, run=run,
                        state=State.QUEUED.value, spec=json.dumps(spec), resources=json.dumps(resources),
                        secret=secret, stream_key=key, created=now, updated=now)
        row.changes.append(ChangeRow(state=State.QUEUED.value, reason=reason, at=now))
        with self._session() as session:
            session.add(row)
            session.flush()
            return self._record(row)

    def get(self, stream_id: str) -> StreamRecord:
        """The stream ``stream_id``; StreamNotFound if there is none."""
        with self._session() as session:
            row = session.get(StreamRow, stream_id)
            if row is None:
                raise StreamNotFound(stream_id)
            return self._record(row)

    def list(self, *, state: State | None = None, experiment: str | None = None, owner: str | None = None,
             limit: int = 50, offset: int = 0, oldest_first: bool = False, ids: list[str] | None = None,
             experiments: list[str] | None = None) -> tuple[list[StreamRecord], int]:
        """Streams matching every filter given, newest (or oldest) first: (``limit`` of them from ``offset``, how
        many match). ``ids`` and ``experiments``: only streams among them (a token's limits)."""
        query = select(StreamRow)
        if ids is not None:
            query = query.where(StreamRow.id.in_(ids))
        if experiments is not None:
            query = query.where(StreamRow.experiment.in_(experiments))
        if state is not None:
            query = query.where(StreamRow.state == state.value)
        if experiment is not None:
            query = query.where(StreamRow.experiment == experiment)
        if owner is not None:
            query = query.where(StreamRow.owner == owner)
        with self._session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            order = StreamRow.created.asc() if oldest_first else StreamRow.created.desc()
            rows = session.scalars(query.order_by(order, StreamRow.id).limit(limit).offset(offset))
            return [self._record(row) for row in rows], int(total or 0)

    def change_state(self, stream_id: str, state: State, reason: str, **columns: Any) -> StreamRecord:
        """Move the stream to ``state`` (TransitionError if its lifecycle does not allow it), record why, and set
        ``columns`` (``endpoints``, ``verdict``: JSON-ready values) in the same transaction."""
        now = time.time()
        with self._session() as session:
            row = session.get(StreamRow, stream_id, with_for_update=True)
            if row is None:
                raise StreamNotFound(stream_id)
            check_transition(State(row.state), state)
            row.state, row.updated = state.value, now
            for column, value in columns.items():
                setattr(row, column, json.dumps(value))
            row.changes.append(ChangeRow(state=state.value, reason=reason, at=now))
            session.flush()
            record = self._record(row)
        self.changes.notify(stream_id)  # once committed: whoever is woken reads it
        return record

    def add_job(self, stream_id: str, role: str, executor: str, native_id: str, directory: str) -> Job:
        """Record a submitted job of the stream."""
        row = JobRow(stream_id=stream_id, role=role, executor=executor, native_id=native_id, directory=directory,
                     submitted=time.time())
        with self._session() as session:
            session.add(row)
            session.flush()
            return Job.of(row)

    def jobs(self, stream_id: str) -> dict[str, Job]:
        """The stream's jobs by role."""
        with self._session() as session:
            rows = session.scalars(select(JobRow).where(JobRow.stream_id == stream_id).order_by(JobRow.id))
            return {row.role: Job.of(row) for row in rows}

    def jobs_of_ended_streams(self) -> list[Job]:
        """Jobs not yet seen to end whose streams have ended (cancelled, or failed while a job still ran)."""
        final = [state.value for state in State if state.final]
        query = select(JobRow).join(StreamRow).where(JobRow.ended.is_(None), StreamRow.state.in_(final))
        with self._session() as session:
            return [Job.of(row) for row in session.scalars(query)]

    def update_job(self, job_id: int, **columns: Any) -> None:
        """Set ``columns`` of job ``job_id`` (``ended``, ``outcome``, ``exit_code``, ``stop_requested``)."""
        with self._session() as session:
            row = session.get(JobRow, job_id)
            for column, value in columns.items():
                setattr(row, column, value)

    def count_by_state(self) -> dict[State, int]:
        """How many streams are in each state (every state present, 0 where none is)."""
        with self._session() as session:
            rows = session.execute(select(StreamRow.state, func.count()).group_by(StreamRow.state))
            found = {State(state): count for state, count in rows}
        return {state: found.get(state, 0) for state in State}

    def count_active(self, owner: str | None = None) -> int:
        """Streams starting or running (of ``owner``, if given): what the concurrency limits count."""
        query = select(func.count()).select_from(StreamRow).where(
            StreamRow.state.in_([State.STARTING.value, State.RUNNING.value]))
        if owner is not None:
            query = query.where(StreamRow.owner == owner)
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def add_token(self, *, digest: str, identity: str, expires: float, experiments: list[str] | None = None,
                  stream: str | None = None, certificate: str | None = None) -> Grant:
        """Record a token by its ``digest`` (never the token): it acts as ``identity`` within its limits until
        ``expires``, or until ``certificate`` (the serial of the certificate that minted it) is revoked."""
        row = TokenRow(id=uuid.uuid4().hex, digest=digest, identity=identity, stream=stream, created=time.time(),
                       expires=expires, experiments=None if experiments is None else json.dumps(experiments),
                       certificate=certificate)
        with self._session() as session:
            session.add(row)
            session.flush()
            return _grant(row)

    def token_by_digest(self, digest: str) -> Grant | None:
        """The token whose SHA-256 is ``digest`` (expired and revoked ones too), or None."""
        with self._session() as session:
            row = session.scalar(select(TokenRow).where(TokenRow.digest == digest))
            return None if row is None else _grant(row)

    def token(self, token_id: str) -> Grant | None:
        """The token ``token_id``, or None."""
        with self._session() as session:
            row = session.get(TokenRow, token_id)
            return None if row is None else _grant(row)

    def revoke_token(self, token_id: str) -> Grant | None:
        """Revoke the token ``token_id`` (from now; a revoked one keeps its first revocation time); None if unknown."""
        with self._session() as session:
            row = session.get(TokenRow, token_id, with_for_update=True)
            if row is None:
                return None
            if row.revoked is None:
                row.revoked = time.time()
            session.flush()
            return _grant(row)

    def healthy(self) -> bool:
        """True if the database answers a query."""
        with self._session() as session:
            return session.scalar(select(1)) == 1


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    """Foreign keys on, write-ahead logging so readers never wait for the writer, and transactions begun by
    SQLAlchemy (:func:`_sqlite_begin_immediate`) rather than by the driver at the first write."""
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    """Begin every transaction holding SQLite's write lock, so that what a transaction reads (a stream's state, to
    check a transition) is still true when it writes: the driver would begin it only at the first write, and two
    transitions made at once (a cancel and a callback) could both pass their check, the later write winning."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _private_sqlite_file(database: str | None) -> None:
    """Create the SQLite file ``database`` readable and writable by its owner only (SQLite gives its write-ahead
    log and shared-memory files the same mode); StoreError if it, or one of those, may be read by others."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create the job store {path}: {exc.strerror}") from None
    for file in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        try:
            mode = file.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StoreError(f"the job store file {file} may be read or changed by others (mode "
                             f"{stat.filemode(mode)}): it holds every stream's sealed key and the state of every "
                             f"stream; chmod 600 {file}")
