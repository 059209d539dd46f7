"""``BufferConfig``: one buffer's settings, as the ``buffer:`` section of a stream spec or ``beamstream buffer``'s options.

    buffer:
      producers: tcp://0.0.0.0:5555      # the stream's `stream` sinks connect here
      consumers: tcp://0.0.0.0:5556      # Client(..., group=...) and `beamstream consume --group` connect here
      max_memory: 4GiB
      spill_dir: /scratch/run42-spill
      retention_s: 86400
      metrics_port: 9100

A service that runs a stream starts its buffer from the spec (``beamstream buffer --spec
SPEC``, or :meth:`BufferConfig.open` in Python) before its producers. Sockets, threads and
nats-py are touched only by :meth:`open`, so validating a spec needs none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from beamstream.jetstream.urls import split_url
from beamstream.stages import SpecModel
from beamstream.units import parse_size

if TYPE_CHECKING:
    from beamstream.buffer.nats_bridge import NatsBridge
    from beamstream.buffer.service import BufferService


def _size(value: Any) -> Any:
    return parse_size(value) if isinstance(value, str) else value


Size = Annotated[int, BeforeValidator(_size), Field(gt=0)]


class BufferConfig(SpecModel):
    """A buffer between a stream's producers and its consumer groups.

    Attributes:
        producers: endpoint the producers connect to (the buffer binds it).
        consumers: endpoint consumers connect to (local backend only).
        max_memory: payload held in memory at most, bytes or a size such as ``2GiB``.
        hwm: messages ZeroMQ queues per producer.
        spill_dir: write every message to segment files here: replay by new groups, survive a restart.
        max_spill: disk the spill may use (None: no bound); with ``backend``: the JetStream stream's size.
        retention_s: seconds acknowledged messages stay for replay (None: until the spill is full);
            with ``backend``: the JetStream stream's maximum age.
        producer_timeout_s: seconds without a word from producers that have not ended before the
            stream is declared incomplete.
        backend: ``nats://HOST:PORT/NAME`` keeps the stream in NATS JetStream instead of this
            process; consumers then read that URL.
        metrics_port: serve Prometheus metrics on this port (0: any free one; None: off).
        metrics_addr: the address the metrics server listens on.
    """

    producers: str = "tcp://127.0.0.1:5555"
    consumers: str = "tcp://127.0.0.1:5556"
    max_memory: Size = 2 << 30
    hwm: int = Field(4, ge=1)
    spill_dir: Path | None = None
    max_spill: Size | None = None
    retention_s: float | None = Field(None, gt=0)
    producer_timeout_s: float = Field(60.0, gt=0)
    backend: str | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_addr: str = "127.0.0.1"

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

    def open(self) -> BufferService | NatsBridge:
        """The buffer, bound and ready; call ``serve()`` (blocks) or ``start()`` (a thread), then ``close()``."""
        if self.backend is not None:
            from beamstream.buffer.nats_bridge import NatsBridge

            return NatsBridge(self.producers, self.backend, hwm=self.hwm, max_bytes=self.max_spill,
                              retention_s=self.retention_s, producer_timeout_s=self.producer_timeout_s)
        from beamstream.buffer.service import BufferService

        return BufferService(self.producers, self.consumers, max_bytes=self.max_memory, hwm=self.hwm,
                             spill=self.spill_dir, max_spill=self.max_spill, retention_s=self.retention_s,
                             producer_timeout_s=self.producer_timeout_s)
