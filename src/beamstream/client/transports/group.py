"""Reading as a member of a consumer group of a local buffer (``beamstream buffer``; docs/buffer-protocol.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

import zmq

from beamstream.client.transports.base import Delivery, StreamEnd, Transport
from beamstream.errors import TransportError, WireFormatError
from beamstream.transport import open_socket
from beamstream.wire.control import Ack, Deliver, Describe, End, Error, Hello, Ping, Rejoin, ToConsumer, pack, unpack
from beamstream.wire.metadata import RunMetadata

HELLO_EVERY_S = 1.0  # while the buffer is silent, say hello again this often (it may have restarted)


class GroupTransport(Transport):
    """A DEALER connected to a buffer's consumer endpoint, member of ``group``.

    The buffer may hand this member ``credit`` messages before it acknowledges one; each is
    acknowledged when the application is done with it (:attr:`Delivery.done`). The buffer's
    liveness pings do not count as deliveries: ``timeout`` runs from when the application
    asked for the next message.
    """

    ends_with_verdict = True

    def __init__(self, endpoint: str, *, group: str, lossy: bool, start: Literal["earliest", "now"],
                 credit: int, max_message: int) -> None:
        self.where = f"the buffer at {endpoint} (group {group})"
        self.context = zmq.Context()
        try:
            self.socket = open_socket(self.context, zmq.DEALER, endpoint, bind=False, hwm=credit, max_message=max_message)
        except TransportError:
            self.context.term()
            raise
        self.hello = pack(Hello(group=group, lossy=lossy, start=start, credit=credit))
        self.described: RunMetadata | None = None
        self.socket.send(self.hello)

    def deliveries(self, timeout: float | None) -> Iterator[Delivery | StreamEnd | None]:
        quiet_since = time.monotonic()
        while True:
            if not self.socket.poll(int(HELLO_EVERY_S * 1000)):
                self.socket.send(self.hello)
            else:
                frames = self.socket.recv_multipart(copy=False)
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
                    self.socket.send(self.hello)
                elif not isinstance(control, Ping):
                    raise WireFormatError(f"{self.where} sent an unexpected {type(control).__name__}")
            if timeout is not None and time.monotonic() - quiet_since > timeout:
                yield None
                quiet_since = time.monotonic()

    def metadata(self) -> RunMetadata | None:
        return self.described

    def _acknowledge(self, offset: int) -> None:
        self.socket.send(pack(Ack(offsets=[offset], credit=1)))

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close(linger=0)
            self.context.term()
