"""``BufferConfig``: one buffer's settings, as the ``buffer:`` section of a stream spec or ``beamstream buffer``'s options.

    buffer:
      producer_endpoint: tcp://0.0.0.0:5555   # the stream's `stream` sinks connect here
      consumer_endpoint: tcp://0.0.0.0:5556   # Client(..., group=...) and `beamstream consume --group` connect here
      max_memory: 4GiB
      spill_dir: /scratch/run42-spill
      retention_s: 86400
      metrics_port: 9100
      admission_key_file: /run/beamstream/run42.admission   # the key's file, never the key itself

A service that runs a stream starts its buffer from the spec (``beamstream buffer --spec
SPEC``, or :meth:`BufferConfig.open` in Python) before its producers. Sockets, threads,
nats-py and the admission key file are touched only by :meth:`open`, so validating a spec needs none of them.

The endpoints were called ``producers`` and ``consumers`` before (words that elsewhere count producers, as in the
wire's ``producers``): those keys are still read, with a warning, until the next release (:data:`RENAMED`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (BeforeValidator, ByteSize, Field, TypeAdapter, ValidationError, WithJsonSchema, field_validator,
                      model_validator)

from beamstream.jetstream.urls import split_url
from beamstream.shared_memory import DEFAULT_ARENA_BYTES
from beamstream.spec_paths import ReadPath, WritePath
from beamstream.stages import SpecModel
from beamstream.transport import DEFAULT_MAX_MESSAGE

if TYPE_CHECKING:
    from beamstream.buffer.base import Buffer

logger = logging.getLogger(__name__)

RENAMED = {"producers": "producer_endpoint", "consumers": "consumer_endpoint"}
"""Old keys (and ``beamstream buffer`` options) still read, each as its new name, with a warning; gone next release."""


_BYTE_SIZE = TypeAdapter(ByteSize)


def _size(value: Any) -> Any:
    """Bytes in ``value`` (an int, or text such as ``2GiB``, ``500MB``, ``1.5 GB``), read by pydantic's ByteSize."""
    try:
        return _BYTE_SIZE.validate_python(value)
    except ValidationError:
        raise ValueError(f"not a size: {value!r}; write a number of bytes, or one with a unit "
                         "(KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 500MB or 2GiB") from None


SIZE_TEXT = r"^\s*[1-9][0-9]{0,15}(\.[0-9]{1,6})?\s*([kKmMgGtT][iI]?[bB]|[bB])?\s*$"
"""Sizes written as text, as :func:`_size` reads them (a number, then a unit), for the JSON Schema."""

Size = Annotated[int, Field(gt=0), BeforeValidator(_size),
                 WithJsonSchema({"anyOf": [{"type": "integer", "exclusiveMinimum": 0},
                                           {"type": "string", "pattern": SIZE_TEXT}]})]


class BufferConfig(SpecModel):
    """A buffer between a stream's producers and its consumer groups.

    Each field's description is its documentation: in ``beamstream spec schema``, and as the
    help of the ``beamstream buffer`` option of the same name.
    """

    producer_endpoint: str = Field("tcp://127.0.0.1:5555",
                                   description="endpoint producers connect to (the buffer binds it)")
    consumer_endpoint: str = Field("tcp://127.0.0.1:5556",
                                   description="endpoint consumers connect to (local backend only)")
    max_memory: Size = Field(2 << 30, description="payload held in memory at most, e.g. 2GiB or 500MB")
    shm_bytes: Size = Field(DEFAULT_ARENA_BYTES, description="with an shm:// consumer endpoint: shared memory the "
                            "buffer lends members for messages that are not in its producers' shared memory (read "
                            "back from the spill, or from ipc:// or tcp:// producers), e.g. 256MiB")
    hwm: int = Field(4, ge=1, description="messages ZeroMQ queues per producer")
    max_message: Size = Field(DEFAULT_MAX_MESSAGE, description="largest message frame taken from a producer, e.g. "
                              "1GiB; a producer that sends a larger one is disconnected before it is allocated")
    spill_dir: WritePath | None = Field(None, description="write every message to segment files here: "
                                                     "replay by new groups, survive a restart")
    max_spill: Size | None = Field(None, description="disk the spill may use, e.g. 50GiB (none: no bound); "
                                                     "with backend: the JetStream stream's size")
    retention_s: float | None = Field(None, gt=0, description="seconds acknowledged messages stay for replay "
                                      "(none: until the spill is full); with backend: the JetStream stream's maximum age, "
                                      "which removes records whether or not every group read them")
    producer_timeout_s: float = Field(60.0, gt=0, description="seconds without a word from producers that have "
                                      "not ended before the stream is declared incomplete")
    max_consumers: int = Field(1024, ge=1, le=1 << 16, description="consumers (group members) served at once; "
                               "one more is refused with an error saying so (local backend)")
    max_connections: int = Field(4096, ge=1, le=1 << 20, description="connections each endpoint the buffer binds "
                                 "keeps open at once; more are shut down as they arrive (fewer if the open-file "
                                 "limit, ulimit -n, cannot hold them)")
    group_stall_s: float = Field(60.0, gt=0, description="seconds a lossless group may keep a full buffer's "
                                 "producers waiting without acknowledging anything before it is dropped "
                                 "(its members are told why)")
    backend: str | None = Field(None, description="keep the stream in NATS JetStream instead, nats://HOST:PORT/NAME; "
                                "consumers read that URL")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port "
                                     "(0: any free one; none: off)")
    metrics_addr: str = Field("127.0.0.1", description="address the metrics server listens on")
    orphan_after_s: float = Field(600.0, gt=0, le=7 * 86400, description="a buffer run by a request service "
                                  "(--callback) ends by itself, leaving its verdict beside its callback file, once "
                                  "no message went in or out, no consumer was attached and its service did not "
                                  "answer for this many seconds (a service gone for good, or a stream long over)")
    callback_retry_s: float = Field(60.0, gt=0, le=86400, description="a buffer run by a request service "
                                    "(--callback) tries this many seconds to tell its service where it listens; "
                                    "if the service never takes it (unreachable at its public_url, or it refused "
                                    "it), the buffer ends at once, as nobody could be told where to read")
    admission_key_file: ReadPath | None = Field(None, description="admit only the stream's credential holders: "
                                            "the file (mode 600) holding the stream's admission key; producer "
                                            "messages must be sealed with it, consumers prove it in their hello "
                                            "(none: admit anyone who reaches the endpoints)")

    @classmethod
    def option_help(cls, name: str) -> str:
        """The help of the command-line option for field ``name``: its description and default."""
        field = cls.model_fields[name]
        default = field.default
        shown = "none" if default is None else f"{default / 2**30:g}GiB" if name in ("max_memory", "max_message") \
            else f"{default / 2**20:g}MiB" if name == "shm_bytes" else default
        return f"{field.description} (default: {shown})"

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        """Read the keys of :data:`RENAMED` as their new names, warning; refuse a setting given under both."""
        if not isinstance(data, dict) or not RENAMED.keys() & data.keys():
            return data
        for old, new in RENAMED.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{old} and {new} are the same setting ({new} is its new name): give only {new}")
                logger.warning("buffer setting %r is now called %r; the old name goes in the next release", old, new)
        return {RENAMED.get(key, key): value for key, value in data.items()}

    @field_validator("backend")
    @classmethod
    def _nats_url(cls, value: str | None) -> str | None:
        if value is not None:
            split_url(value)
        return value

    @model_validator(mode="after")
    def _local_options_without_backend(self) -> BufferConfig:
        if self.backend is not None and self.spill_dir is not None:
            raise ValueError("spill_dir is for the local buffer; with backend, NATS keeps the stream")
        return self

    def open(self) -> Buffer:
        """The buffer, bound and ready (:func:`~beamstream.buffer.run.open_buffer`); call ``serve()`` (blocks)
        or ``start()`` (a thread), then ``close()``."""
        from beamstream.buffer.run import open_buffer

        return open_buffer(self)
