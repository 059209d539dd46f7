"""``plain``: every serialized blob as one ZeroMQ message on a PUSH socket, without beamstream's header.

For clients that speak no beamstream: a pyzmq PULL socket reads the blobs (docs/simplon.md has a ten-line
reader). An ``hdf5`` message is one blob, an HDF5 file (one per frame without a batch step); a ``simplon`` message
is one blob per event, a DECTRIS image message, and each producer's series gets its start and end messages
(:meth:`beamstream.codecs.simplon.SimplonCodec.plain_framing`). The ``arrays`` serializer is refused: its
blobs are raw buffers whose dtype and shape only the header says.

What the stream sink gives and this one does not: no header, so a client learns the stream, producer,
sequence numbers and description only from what the blobs say; no acknowledgement and no loss accounting: a
blob a client never reads is not noticed, and ZeroMQ may drop the last ones when the producer closes (it waits
up to ``send_timeout_s`` for them to leave; libzmq issues 1922, 3774, 4660); no sealing: a sealed stream
(``--key-file``) is refused, and the blobs travel as they are (no CurveZMQ either: bind ipc:// or a trusted
network); no verdict: nothing tells a client that the stream ended complete, or ended at all, unless the
serializer's own messages do (simplon's end).

A codec may frame what it sends here with ``plain_framing(context)``, returning an object with ``opening(first
message)``, ``blobs(message)`` and ``closing(end message)``, each a list of blobs; without it each payload frame
is a blob.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import zmq
from pydantic import Field, field_validator

from beamstream.codecs import decoder
from beamstream.errors import StreamTimeout, TransportError
from beamstream.sinks.stream import NOTICE_AFTER_S
from beamstream.stages import SinkContext, SinkSpec
from beamstream.transport import open_socket, rank_endpoint, shared, spec_endpoint
from beamstream.wire import DataMessage, EndMessage

logger = logging.getLogger(__name__)
RAW_SERIALIZERS = frozenset({"arrays"})  # blobs that mean nothing without the header


class PlainSink(SinkSpec):
    """Send each serialized blob as one ZeroMQ message (PUSH; clients PULL), with no beamstream header.

    Attributes:
        endpoint: tcp://HOST:PORT or ipc://PATH.
        bind: False (default): every producer connects to a client that binds. True: each producer binds;
            producer r binds PORT+r (ipc: PATH-r), and clients connect to each.
        hwm: blobs queued per client before a send waits. Default 4.
        send_timeout_s: how long a send may wait for a client before the producer fails, and how long closing
            waits for the last blobs to leave. Default 300.
    """

    type: Literal["plain"] = "plain"
    endpoint: str
    bind: bool = False
    hwm: int = Field(4, ge=1)
    send_timeout_s: float = Field(300.0, gt=0)

    @property
    def sealable(self) -> bool:
        return False  # blobs without beamstream's header have no room for a seal

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, endpoint: str) -> str:
        spec_endpoint(endpoint)
        if shared(endpoint):
            raise ValueError(f"{endpoint}: the plain sink sends blobs over ZeroMQ itself; shared memory (shm://) is "
                             "the stream sink's: give an ipc:// or tcp:// endpoint")
        return endpoint

    def open(self, context: SinkContext) -> PlainSender:
        """A PUSH socket for producer ``context.rank``; TransportError for a sealed stream."""
        if context.key is not None:
            raise TransportError("the plain sink sends blobs without beamstream's header, so it cannot seal them, "
                                 "and this stream is sealed: use the stream sink, or produce without --key-file")
        endpoint = rank_endpoint(self.endpoint, context.rank) if self.bind else self.endpoint
        return PlainSender(self, endpoint, context)


class _Unframed:
    """Each payload frame a blob; nothing before or after."""

    def opening(self, message: DataMessage) -> list[Any]:
        return []

    def blobs(self, message: DataMessage) -> list[Any]:
        return message.payload

    def closing(self, end: EndMessage) -> list[Any]:
        return []


class PlainSender:
    """One producer's PUSH socket; ``send`` waits while clients are behind, up to ``send_timeout_s``."""

    def __init__(self, spec: PlainSink, endpoint: str, context: SinkContext) -> None:
        self.spec = spec
        self.endpoint = endpoint
        self.sink_context = context
        self.framing: Any = None  # chosen by the first message's serializer
        self.waiting_said = False
        self.context = zmq.Context()
        self.socket = open_socket(self.context, zmq.PUSH, endpoint, bind=spec.bind, hwm=spec.hwm)
        self.socket.setsockopt(zmq.SNDTIMEO, int(spec.send_timeout_s * 1000))
        self.socket.setsockopt(zmq.LINGER, int(spec.send_timeout_s * 1000))

    def send(self, message: DataMessage) -> None:
        if self.framing is None:
            if message.serializer in RAW_SERIALIZERS:
                raise TransportError(f"the plain sink sends each blob without a header, and {message.serializer} "
                                     "blobs are raw buffers without dtype or shape: use serializer hdf5 or simplon")
            framing = getattr(decoder(message.serializer), "plain_framing", None)
            self.framing = framing(self.sink_context) if framing is not None else _Unframed()
            self._send_all(self.framing.opening(message))
        self._send_all(self.framing.blobs(message))

    def close(self, end: EndMessage) -> None:
        """Send the framing's closing blobs (if a message was sent), then close, waiting up to ``send_timeout_s``
        for queued blobs to leave."""
        try:
            if self.framing is not None:
                self._send_all(self.framing.closing(end))
        finally:
            self.socket.close()
            self.context.term()

    def _send_all(self, blobs: list[Any]) -> None:
        for blob in blobs:
            if not self.waiting_said and not self.socket.poll(int(NOTICE_AFTER_S * 1000), zmq.POLLOUT):
                self.waiting_said = True
                logger.warning("waiting for a client at %s (nothing has taken a blob yet: connect a PULL socket)",
                               self.endpoint)
            try:
                self.socket.send(blob, copy=False)
            except zmq.Again:
                raise StreamTimeout(f"no client took a blob from {self.endpoint} within {self.spec.send_timeout_s} s:"
                                    " start one (a PULL socket) or raise send_timeout_s") from None
            except zmq.ZMQError as exc:
                raise TransportError(f"{self.endpoint}: send failed: {exc.strerror}") from None
