"""Reading as a member of a consumer group of a local buffer (``beamstream buffer``; docs/buffer-protocol.md).

The consumer protocol (hello, ack, deliver, describe, end, ping, rejoin, error) is spoken here
once, by :class:`GroupMember`, over a :class:`Carrier` that only moves its frames: a ZeroMQ
DEALER connected to the buffer (:class:`GroupTransport`) or a WebSocket to the request service's
relay (:class:`~beamstream.client.transports.relay.RelayTransport`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from typing import Any, Literal

import zmq

from beamstream.client.transports.base import Delivery, StreamEnd, Transport
from beamstream.errors import TransportError, WireFormatError
from beamstream.transport import open_socket
from beamstream.wire.control import Ack, Deliver, Describe, End, Error, Hello, Ping, Rejoin, ToConsumer, pack, unpack
from beamstream.wire.metadata import RunMetadata

HELLO_EVERY_S = 1.0  # while the buffer is silent, say hello again this often (it may have restarted)


class Carrier(ABC):
    """How a member's frames travel to and from its buffer. ``where`` names the far end in messages."""

    where: str

    @abstractmethod
    def send(self, frame: bytes) -> None:
        """Send one control frame to the buffer."""

    @abstractmethod
    def receive(self, wait_s: float) -> list[Any] | None:
        """The frames of the next message from the buffer, or None if none came within ``wait_s`` seconds."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the connection; safe to call twice."""


class GroupMember(Transport):
    """A member of ``group`` of the buffer at the far end of ``carrier``.

    The buffer may hand this member ``credit`` messages before it acknowledges one; each is
    acknowledged when the application is done with it (:attr:`Delivery.done`), so a message a
    member was working on when it died goes to another member. While the buffer is silent the
    member says hello again every second (the buffer may have restarted, or be still starting).
    The buffer's liveness pings do not count as deliveries: ``timeout`` runs from when the
    application asked for the next message. A buffer's ``error`` raises TransportError with its
    reason; a control message that is not the consumer protocol raises WireFormatError.
    """

    ends_with_verdict = True

    def __init__(self, carrier: Carrier, *, group: str, lossy: bool, start: Literal["earliest", "now"],
                 credit: int) -> None:
        self.carrier = carrier
        self.where = f"{carrier.where} (group {group})"
        self.hello = pack(Hello(group=group, lossy=lossy, start=start, credit=credit))
        self.described: RunMetadata | None = None
        try:
            self.carrier.send(self.hello)
        except BaseException:
            carrier.close()
            raise

    def deliveries(self, timeout: float | None) -> Iterator[Delivery | StreamEnd | None]:
        quiet_since = time.monotonic()
        while True:
            frames = self.carrier.receive(HELLO_EVERY_S)
            if frames is None:
                self.carrier.send(self.hello)
            else:
                control = unpack(frames[0], ToConsumer)
                if isinstance(control, Deliver):
                    yield Delivery(frames[1:], done=lambda offset=control.offset: self._acknowledge(offset),
                                   skipped=control.skipped)
                    quiet_since = time.monotonic()
                    continue
                if isinstance(control, Describe):
                    self.described = control.metadata
                    continue
                if isinstance(control, End):
                    yield StreamEnd(control.verdict, control.skipped)
                    return
                if isinstance(control, Error):
                    raise TransportError(f"{self.where} refused this client: {control.reason}")
                if isinstance(control, Rejoin):
                    self.carrier.send(self.hello)
                elif not isinstance(control, Ping):
                    raise WireFormatError(f"{self.where} sent an unexpected {type(control).__name__}")
            if timeout is not None and time.monotonic() - quiet_since > timeout:
                yield None
                quiet_since = time.monotonic()

    def metadata(self) -> RunMetadata | None:
        return self.described

    def _acknowledge(self, offset: int) -> None:
        self.carrier.send(pack(Ack(offsets=[offset], credit=1)))

    def close(self) -> None:
        self.carrier.close()


class DealerCarrier(Carrier):
    """A DEALER connected to a buffer's consumer ``endpoint``: ``hwm`` messages queued, frames up to ``max_message``.

    Sending never blocks: a frame the socket cannot take (its queue is full because the buffer
    is gone, or not reading) waits here and goes out, in order, before the next one and at each
    receive. So a reader whose buffer vanished still notices its silence after ``timeout`` seconds.
    A hello already waiting is not queued again.
    """

    def __init__(self, endpoint: str, *, hwm: int, max_message: int) -> None:
        self.where = f"the buffer at {endpoint}"
        self.context = zmq.Context()
        try:
            self.socket = open_socket(self.context, zmq.DEALER, endpoint, bind=False, hwm=hwm, max_message=max_message)
        except TransportError:
            self.context.term()
            raise
        self.waiting: deque[bytes] = deque()

    def send(self, frame: bytes) -> None:
        if frame not in self.waiting:  # acks differ from each other; an unsent hello need not go twice
            self.waiting.append(frame)
        self._flush()

    def _flush(self) -> None:
        while self.waiting:
            try:
                self.socket.send(self.waiting[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            self.waiting.popleft()

    def receive(self, wait_s: float) -> list[Any] | None:
        self._flush()
        if not self.socket.poll(int(wait_s * 1000)):
            return None
        return self.socket.recv_multipart(copy=False)

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close(linger=0)
            self.context.term()


class GroupTransport(GroupMember):
    """A member of ``group`` over a DEALER connected to the buffer's consumer ``endpoint`` (its HWM: ``credit``)."""

    def __init__(self, endpoint: str, *, group: str, lossy: bool, start: Literal["earliest", "now"],
                 credit: int, max_message: int) -> None:
        super().__init__(DealerCarrier(endpoint, hwm=credit, max_message=max_message), group=group, lossy=lossy,
                         start=start, credit=credit)
