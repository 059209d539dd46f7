"""The job store's tables (SQLAlchemy's declarative models), as the newest migration in
:mod:`beamstream.service.migrations` makes them: ``tests/test_store_migrations.py`` checks that they agree.
Secrets are sealed (:mod:`beamstream.service.at_rest`) before they reach a column; JSON is stored as text."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class StreamRow(Base):
    __tablename__ = "streams"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256), index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    experiment: Mapped[str | None] = mapped_column(String(256), index=True)
    run: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[str] = mapped_column(Text)  # the stream spec, JSON
    resources: Mapped[str] = mapped_column(Text)  # JSON
    secret: Mapped[str] = mapped_column(Text)  # signs the jobs' callbacks; sealed (at_rest)
    stream_key: Mapped[str | None] = mapped_column(Text)  # the stream's credentials (StreamKey text); sealed; never shown
    endpoints: Mapped[str | None] = mapped_column(Text)  # JSON, once the buffer said where it listens
    verdict: Mapped[str | None] = mapped_column(Text)  # JSON, once the stream ended
    created: Mapped[float] = mapped_column(Float, index=True)
    updated: Mapped[float] = mapped_column(Float)
    changes: Mapped[list[ChangeRow]] = relationship(order_by="ChangeRow.id", cascade="all, delete-orphan")


class ChangeRow(Base):
    __tablename__ = "state_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # buffer or producers
    executor: Mapped[str] = mapped_column(String(16))
    native_id: Mapped[str] = mapped_column(String(256))
    directory: Mapped[str] = mapped_column(Text)
    submitted: Mapped[float] = mapped_column(Float)
    ended: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str | None] = mapped_column(String(16))  # succeeded, failed or lost, once ended
    exit_code: Mapped[int | None] = mapped_column(Integer)
    stop_requested: Mapped[float | None] = mapped_column(Float)


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # SHA-256 of the token, hex
    identity: Mapped[str] = mapped_column(String(256), index=True)
    experiments: Mapped[str | None] = mapped_column(Text)  # JSON list, or None: not limited
    stream: Mapped[str | None] = mapped_column(String(32))
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)
    revoked: Mapped[float | None] = mapped_column(Float)
    certificate: Mapped[str | None] = mapped_column(String(64))  # serial (hex) of the certificate that minted it
