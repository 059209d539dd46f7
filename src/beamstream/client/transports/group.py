"""Reading as a member of a consumer group of a local buffer (``beamstream buffer``; docs/buffer-protocol.md).

The consumer protocol (hello, ack, deliver, describe, end, ping, rejoin, error) is spoken here
once, by :class:`GroupMember`, over a :class:`Carrier` that only moves its frames: a ZeroMQ
DEALER connected to the buffer (:class:`GroupTransport`) or a WebSocket to the request service's
relay (:class:`~beamstream.client.transports.relay.RelayTransport`).

A buffer that holds its stream's admission key admits a member only if its hello proves that it holds the
key too: a member given ``admission`` (the stream key's ``.admission``) signs every hello it sends, each
with a fresh nonce and the time (:func:`~beamstream.wire.control.proven_hello`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import zmq

from beamstream.client.transports.base import DEFAULT_HWM, Delivery, Options, StreamEnd, Transport, refusal
from beamstream.errors import TransportError, WireFormatError
from beamstream.shared_memory import ArenaMaps, read_slot
from beamstream.transport import DEFAULT_MAX_MESSAGE, open_socket, shared
from beamstream.wire.control import (Ack, Deliver, Describe, End, Error, Ping, Rejoin, ToConsumer, pack,
                                      proven_hello, unpack)
from beamstream.wire.metadata import RunMetadata

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey, StreamKey

HELLO_EVERY_S = 1.0  # while the buffer is silent, say hello again this often (it may have restarted)
GROUP_SCOPE = "with group=... (a buffer's consumer group)"  # where a group member's options apply


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

    def send_hello(self, frame: bytes) -> None:
        """Send a hello; it replaces any earlier hello not sent yet (each proven hello differs from the last)."""
        self.send(frame)


class GroupMember(Transport):
    """A member of ``group`` of the buffer at the far end of ``carrier``.

    The buffer may hand this member ``credit`` messages before it acknowledges one; each is
    acknowledged when the application is done with it (:attr:`Delivery.done`), so a message a
    member was working on when it died goes to another member. While the buffer is silent the
    member says hello again every second (the buffer may have restarted, or be still starting).
    The buffer's liveness pings do not count as deliveries: ``timeout`` runs from when the
    application asked for the next message. A buffer's ``error`` raises TransportError with its
    reason; a control message that is not the consumer protocol raises WireFormatError.
    With ``admission`` (the stream's admission key) every hello carries a fresh proof that this member holds
    it, which a buffer given that key requires.
    """

    ends_with_verdict = True

    def __init__(self, carrier: Carrier, *, group: str, lossy: bool, start: Literal["earliest", "now"],
                 credit: int, admission: AdmissionKey | None = None) -> None:
        self.carrier = carrier
        self.where = f"{carrier.where} (group {group})"
        self.hello_options: dict[str, Any] = {"group": group, "lossy": lossy, "start": start, "credit": credit}
        self.admission = admission
        self.described: RunMetadata | None = None
        try:
            self.say_hello()
        except BaseException:
            carrier.close()
            raise

    @property
    def hello(self) -> bytes:
        """A hello to send now (with a fresh proof if this member holds the admission key)."""
        return pack(proven_hello(self.admission, **self.hello_options))

    def say_hello(self) -> None:
        self.carrier.send_hello(self.hello)

    def deliveries(self, timeout: float | None) -> Iterator[Delivery | StreamEnd | None]:
        quiet_since = time.monotonic()
        while True:
            frames = self.carrier.receive(HELLO_EVERY_S)
            if frames is None:
                self.say_hello()
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
                    self.say_hello()
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
    A hello not sent yet is replaced by the next one, not queued behind it.
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
        self.hello_waiting: bytes | None = None

    def send(self, frame: bytes) -> None:
        self.waiting.append(frame)
        self._flush()

    def send_hello(self, frame: bytes) -> None:
        if self.hello_waiting is not None:
            try:
                self.waiting.remove(self.hello_waiting)
            except ValueError:
                pass  # sent meanwhile
        self.hello_waiting = frame
        self.send(frame)

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
    """A member of ``group`` over a DEALER connected to the buffer's consumer ``endpoint`` (its HWM: ``credit``).

    Over an ``shm://`` endpoint the buffer sends slot references, and each message's payload is read-only views of
    the slot (:mod:`beamstream.client.transports.shared`), valid until the message is acknowledged (the
    application asks for the next one); ``copy``: copies instead.
    """

    takes = frozenset({"group", "hwm", "lossy", "start", "max_message", "copy"})
    scope = GROUP_SCOPE
    scopes = {"copy": "to shm:// streams"}
    refuses = {"endpoints": "a group reads one buffer", "bind": "a group member connects to its buffer",
               "pattern": "every group gets every message",
               "redeliver_after": "the local buffer notices a departed member itself"}

    def __init__(self, endpoint: str, *, group: str, lossy: bool = False,
                 start: Literal["earliest", "now"] = "earliest", credit: int = DEFAULT_HWM,
                 max_message: int = DEFAULT_MAX_MESSAGE, admission: AdmissionKey | None = None,
                 copy: bool = False) -> None:
        super().__init__(DealerCarrier(endpoint, hwm=credit, max_message=max_message), group=group, lossy=lossy,
                         start=start, credit=credit, admission=admission)
        self.maps = ArenaMaps() if shared(endpoint) else None
        self.copy = copy

    @classmethod
    def from_options(cls, endpoints: list[str], options: Options, key: StreamKey | None) -> GroupTransport:
        if options.get("copy") and not shared(endpoints[0]):
            raise refusal("copy", "to shm:// streams", endpoints, options)
        return cls(endpoints[0], **member_options(options, key))

    def deliveries(self, timeout: float | None) -> Iterator[Delivery | StreamEnd | None]:
        for delivery in super().deliveries(timeout):
            if self.maps is not None and isinstance(delivery, Delivery):
                try:
                    delivery.frames = read_slot(self.maps, delivery.frames, copy=self.copy)[0]
                except WireFormatError as exc:
                    delivery.problem = str(exc)
            yield delivery

    def close(self) -> None:
        super().close()
        if self.maps is not None:
            self.maps.close()


def member_options(options: Options, key: StreamKey | None) -> dict[str, Any]:
    """``options`` in the words of a group member's constructor: ``hwm`` is its credit; with the stream's ``key``,
    it proves to its buffer that it holds the admission key."""
    taken: dict[str, Any] = dict(options)
    if "hwm" in taken:
        taken["credit"] = taken.pop("hwm")
    if key is not None:
        taken["admission"] = key.admission
    return taken
