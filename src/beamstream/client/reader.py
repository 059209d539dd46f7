"""``Client``: connect to a stream, yield messages or events, account for every event.

    with Client("tcp://127.0.0.1:5555", timeout=10.0) as client:
        for event in client.events():
            use(event.seq, event.data["image"])
    print(client.report.summary())

Iteration ends when every producer has sent its end-of-stream message. If the stream
then lacks events, or goes silent for ``timeout`` seconds first, StreamIncomplete is
raised (its ``report`` names the missing sequence ranges): nothing incomplete passes
as complete. Received arrays are read-only views that keep their message alive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zmq

from beamstream.buffer.protocol import pack, unpack
from beamstream.client.report import StreamReport
from beamstream.errors import StreamIncomplete, StreamTimeout, TransportError
from beamstream.serializers import decode_payload
from beamstream.transport import ACK, kept, open_socket
from beamstream.wire import DataMessage, EndMessage, parse_message

if TYPE_CHECKING:
    from beamstream.client.nats_source import NatsDeliveries


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its sequence number, time (s since the epoch), producer rank and arrays."""

    seq: int
    time: float
    rank: int
    data: dict[str, np.ndarray]


@dataclass(slots=True)
class Message:
    """One received data message with its decoded arrays (batch axis first)."""

    header: DataMessage
    arrays: dict[str, np.ndarray]
    received: float

    @property
    def seq(self) -> np.ndarray:
        return self.header.seq

    @property
    def time(self) -> np.ndarray:
        return self.header.time

    def events(self) -> Iterator[Event]:
        for index, seq in enumerate(self.header.seq):
            data = {name: array[index] for name, array in self.arrays.items()}
            yield Event(int(seq), float(self.header.time[index]), self.header.rank, data)


class Client:
    """Reads one stream from one or more endpoints.

    Args:
        endpoints: an endpoint or a list (e.g. one per producer that binds its own), or
            ``nats://HOST:PORT/NAME``: the stream a buffer keeps in NATS JetStream
            (``beamstream buffer --backend``), read as a member of ``group`` or, without one,
            whole by this client alone.
        timeout: seconds of silence before giving up (None waits forever).
        bind: bind the endpoints instead of connecting (producers then connect).
        pattern: ``pull`` (default) or ``sub`` (broadcast streams). Either way the client
            acknowledges each end-of-stream message upstream, so producers close only once it arrived.
        verify: check every payload's checksum.
        stream: accept only this stream id (default: the first one seen).
        hwm: messages queued in this client before the sender waits (with a group: messages
            the buffer may hand this client before it acknowledges one).
        group: read from a buffer (``beamstream buffer``) as a member of this consumer group;
            members of a group share the messages, every group gets all of them. A message is
            acknowledged when the application asks for the next one, so one a client was
            still working on when it died goes to another member.
        lossy: with a group: always hand over the newest message, skipping older ones
            (counted in ``report.skipped``), e.g. for a live viewer.
        start: with a group that does not exist yet: ``earliest`` message held, or ``now``.
        redeliver_after: with ``nats://`` and a group this client creates: seconds after which a
            message a member has not acknowledged goes to another member (the local buffer
            instead notices a departed member within a second).
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float | None = 10.0, bind: bool = False,
                 pattern: Literal["pull", "sub"] = "pull", verify: bool = True, stream: str | None = None,
                 hwm: int = 4, group: str | None = None, lossy: bool = False,
                 start: Literal["earliest", "now"] = "earliest", redeliver_after: float = 30.0) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.timeout = timeout
        self.verify = verify
        self.group = group
        self.report = StreamReport(endpoints=self.endpoints, stream=stream)
        self._seen: set[tuple[int, int]] = set()
        self._closed = False
        self._nats: NatsDeliveries | None = None
        if self.endpoints[0].startswith("nats://"):
            from beamstream.client.nats_source import NatsDeliveries

            if len(self.endpoints) > 1 or bind or pattern != "pull":
                raise ValueError("a nats:// stream is read by one Client from one URL, without bind or pattern='sub'")
            self._nats = NatsDeliveries(self.endpoints[0], group, lossy, start, redeliver_after)
            return
        self._context = zmq.Context()
        self._socket = self._open(bind, pattern, hwm)
        self._hello = None if group is None else pack("hello", group=group, lossy=lossy, start=start, credit=hwm)
        if self._hello is not None:
            self._socket.send(self._hello)
        self._last_delivery = time.monotonic()

    def _open(self, bind: bool, pattern: str, hwm: int) -> zmq.Socket:
        kind = zmq.DEALER if self.group is not None else zmq.ROUTER if pattern == "pull" else zmq.XSUB
        try:
            socket = open_socket(self._context, kind, self.endpoints[0], bind=bind, hwm=hwm,
                                 replies="out" if kind == zmq.ROUTER else None)
            for endpoint in self.endpoints[1:]:
                (socket.bind if bind else socket.connect)(endpoint)
        except (TransportError, zmq.ZMQError):
            self._context.term()
            raise
        if kind == zmq.XSUB:
            socket.send(b"\x01")  # subscribe to everything
        return socket

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._nats is not None:
            self._nats.close()
            return
        self._socket.close(linger=0)
        self._context.term()

    def _receive(self) -> tuple[list[zmq.Frame], list[zmq.Frame]]:
        """(routing frames, message frames) of the next message."""
        if self._closed:
            raise TransportError("this Client is closed; create a new one to read again")
        if self.group is not None:
            self._wait_for_buffer()
        elif not self._socket.poll(None if self.timeout is None else int(self.timeout * 1000)):
            self._silent()
        frames = self._socket.recv_multipart(copy=False)
        routing = 1 if self._socket.type == zmq.ROUTER else 0
        return frames[:routing], frames[routing:]

    def _wait_for_buffer(self) -> None:
        """Wait for the buffer; say hello again after every second of silence (it may have restarted)."""
        started = time.monotonic()
        while not self._socket.poll(1000):
            if self.timeout is not None and time.monotonic() - started > self.timeout:
                self._silent()
            self._socket.send(self._hello)

    def _silent(self) -> None:
        """Raise for a stream that said nothing for ``timeout`` seconds."""
        where = ", ".join(self.endpoints)
        if self.group is not None and self.report.producers is not None:
            raise StreamIncomplete(f"the buffer at {where} sent nothing for {self.timeout} s and has not ended the "
                                   f"stream (group {self.group}; this consumer got {self.report.events} events)",
                                   self.report)
        if self.report.producers is None:
            raise StreamTimeout(f"nothing arrived from {where} within {self.timeout} s: is a producer sending there?")
        raise StreamIncomplete(
            f"the stream from {where} went silent for {self.timeout} s before it ended:\n{self.report.summary()}",
            self.report,
        )

    def _acknowledge(self, routing: list[zmq.Frame]) -> None:
        self._socket.send_multipart([*routing, ACK])

    def _from_buffer(self, frames: list[zmq.Frame]) -> tuple[int | None, list[zmq.Frame]]:
        """(offset, message frames) of a delivery; records the buffer's verdict at the end (offset None).

        The buffer's liveness pings are read past here.
        """
        control = unpack(frames[0])
        while control["op"] in ("ping", "rejoin"):
            if control["op"] == "rejoin":
                self._socket.send(self._hello)
            if self.timeout is not None and time.monotonic() - self._last_delivery > self.timeout:
                self._silent()
            _, frames = self._receive()
            control = unpack(frames[0])
        self._last_delivery = time.monotonic()
        if control["op"] == "error":
            raise TransportError(f"the buffer at {', '.join(self.endpoints)} refused this client: {control['reason']}")
        if control["op"] == "end":
            self.report.verdict = (bool(control["complete"]), str(control["summary"]))
            self.report.skipped = int(control["skipped"])
            return None, []
        self.report.skipped = int(control["skipped"])
        return int(control["offset"]), frames[1:]

    def _ended(self) -> bool:
        by_verdict = self.group is not None or self._nats is not None
        return self.report.verdict is not None if by_verdict else self.report.all_ended

    def _from_nats(self, deliveries: NatsDeliveries) -> Iterator[Message]:
        for frames, ack in deliveries.deliveries(self.report, self.timeout, self._silent):
            yield from self._accept(parse_message(frames, verify=self.verify), [])
            ack()

    def messages(self) -> Iterator[Message]:
        """Data messages in arrival order, each once, until every producer has ended."""
        if self._nats is not None:
            yield from self._from_nats(self._nats)
        while not self._ended():
            routing, frames = self._receive()
            if self.group is not None:
                offset, frames = self._from_buffer(frames)
                if offset is None:
                    break
                yield from self._accept(parse_message(frames, verify=self.verify), routing)
                self._socket.send(pack("ack", offsets=[offset], credit=1))
                continue
            yield from self._accept(parse_message(frames, verify=self.verify), routing)
        if not self.report.complete:
            raise StreamIncomplete(f"the stream ended incomplete:\n{self.report.summary()}", self.report)

    def _accept(self, message: DataMessage | EndMessage, routing: list[zmq.Frame]) -> Iterator[Message]:
        """The message, unless it is an end message, of another stream, or a duplicate."""
        if isinstance(message, EndMessage):
            self._acknowledge(routing)
        elif routing:  # a push producer keeps each message until told it arrived
            self._socket.send_multipart([*routing, kept(message.index)])
        if self.report.stream is not None and message.stream != self.report.stream:
            self.report.foreign += 1
            return
        if isinstance(message, EndMessage):
            self.report.add_end(message)
            return
        key = (message.rank, message.index)
        if key in self._seen:
            self.report.duplicates += 1
            return
        self._seen.add(key)
        self.report.add_data(message)
        yield Message(message, decode_payload(message), time.time())

    def events(self) -> Iterator[Event]:
        """Events of every message, in arrival order."""
        for message in self.messages():
            yield from message.events()
