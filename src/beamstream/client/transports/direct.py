"""Reading straight from producers: a ROUTER (their push DEALERs) or an XSUB (their pub XPUBs)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import zmq

from beamstream.client.transports.base import DEFAULT_HWM, Delivery, Options, Transport
from beamstream.errors import TransportError
from beamstream.transport import DEFAULT_MAX_MESSAGE, open_socket
from beamstream.wire import DataMessage, EndMessage
from beamstream.wire.replies import ACK, kept, refused

if TYPE_CHECKING:
    from beamstream.security.streamkey import StreamKey


class DirectTransport(Transport):
    """Producers' messages from ``endpoints``, bound or connected.

    ``pattern="pull"``: a ROUTER; each data message is answered ``kept`` and each end message
    ``ack`` to the producer that sent it, or ``refused`` if the Client does not take it. ``pattern="sub"``: an XSUB subscribed to everything;
    each end message is answered ``ack``. ``hwm``: messages queued here before senders wait;
    ``max_message``: the largest frame taken (a sender of a larger one is disconnected).
    """

    ends_with_verdict = False
    takes = frozenset({"endpoints", "bind", "pattern", "hwm", "max_message"})
    scope = "to streams read from producers directly"

    def __init__(self, endpoints: Sequence[str], *, bind: bool = False, pattern: Literal["pull", "sub"] = "pull",
                 hwm: int = DEFAULT_HWM, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.where = ", ".join(endpoints)
        self.context = zmq.Context()
        kind = zmq.ROUTER if pattern == "pull" else zmq.XSUB
        try:
            self.socket = open_socket(self.context, kind, endpoints[0], bind=bind, hwm=hwm,
                                      replies="out" if kind == zmq.ROUTER else None, max_message=max_message)
            for endpoint in endpoints[1:]:
                (self.socket.bind if bind else self.socket.connect)(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close(linger=0)
            self.context.term()
            raise TransportError(f"cannot {'bind' if bind else 'connect to'} {self.where}: {exc.strerror}") from None
        except TransportError:
            self.context.term()
            raise
        if kind == zmq.XSUB:
            self.socket.send(b"\x01")  # subscribe to everything
        self.routed = kind == zmq.ROUTER
        self.session = ""  # what this reader tells producers it is, in each kept (over shared memory)

    @classmethod
    def from_options(cls, endpoints: list[str], options: Options, key: StreamKey | None) -> DirectTransport:
        return cls(endpoints, **options)

    def deliveries(self, timeout: float | None) -> Iterator[Delivery | None]:
        wait_ms = None if timeout is None else int(timeout * 1000)
        while True:
            if not self.socket.poll(wait_ms):
                yield None
                continue
            frames = self.socket.recv_multipart(copy=False)
            routing = frames[:1] if self.routed else []
            delivery = self._delivery(routing, frames[len(routing):])
            if delivery is not None:
                yield delivery

    def _delivery(self, routing: list[zmq.Frame], frames: list[zmq.Frame]) -> Delivery | None:
        """The delivery of ``frames``, which came from the producer ``routing`` names (nobody, for XSUB); None
        for one to drop unseen."""
        return Delivery(frames, receipt=lambda message: self._reply(routing, message),
                        refuse=lambda reason: self._refuse(routing, reason))

    def _reply(self, routing: list[zmq.Frame], message: DataMessage | EndMessage) -> None:
        if isinstance(message, EndMessage):
            self.socket.send_multipart([*routing, ACK])
        elif routing:  # a push producer keeps each message until told it arrived
            self.socket.send_multipart([*routing, kept(message.index, self.session)])

    def _refuse(self, routing: list[zmq.Frame], reason: str) -> None:
        if routing:  # a push producer then fails with the reason; a publisher cannot be told apart
            self.socket.send_multipart([*routing, refused(reason)])

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close(linger=0)
            self.context.term()
