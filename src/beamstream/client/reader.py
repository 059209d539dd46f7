"""``Client``: read a stream, yield messages or events, account for every event.

    with Client("tcp://127.0.0.1:5555", timeout=10.0) as client:
        for event in client.events():
            use(event.seq, event.data["image"])
    print(client.report.summary())

Iteration ends when every producer has sent its end-of-stream message (or, reading through a
buffer, when the buffer says the stream has ended). A message that cannot be read (malformed,
or a payload that does not match its checksum) or belongs to another stream is refused — its
producer is told why where the transport can say so — counted in the report and logged; it
never ends the iteration. A sealed stream (docs/wire-format.md, "Sealed messages") is read
with its key (``key=``): a message the key does not open (forged, altered, unsealed) is refused
and counted as ``forged``, and never delivered nor taken as a producer's end; a Client without
a key raises SealRefused at the first sealed message. If the stream then lacks events, or goes
silent for ``timeout`` seconds first, StreamIncomplete is raised (its ``report`` names the
missing sequence ranges): nothing incomplete passes as complete. Received arrays are
read-only views that keep their message alive.

How the messages arrive is the job of a transport (:mod:`beamstream.client.transports`),
picked once from the endpoint and options; parsing, checksums, duplicates and the account
are done here, the same for all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from beamstream.accounting import StreamReport
from beamstream.client.transports.base import Delivery, StreamEnd, Transport
from beamstream.codecs import decode_payload
from beamstream.errors import (OptionError, SealRefused, StreamIncomplete, StreamTimeout, TransportError,
                               WireFormatError)
from beamstream.logs import WarnOnce
from beamstream.security.streamkey import StreamKey
from beamstream.transport import DEFAULT_MAX_MESSAGE
from beamstream.wire import DataMessage, EndMessage, parse_message
from beamstream.wire.metadata import RunMetadata

logger = logging.getLogger(__name__)
DEFAULT_HWM = 4
DEFAULT_REDELIVER_AFTER = 30.0


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
            whole by this client alone, or ``http(s)://SERVICE/v1/streams/ID``: a stream of the
            request service, read as a member of ``group`` through the service's relay (a
            WebSocket; docs/relay.md), for a reader that can reach the service but not its buffer.
        timeout: seconds of silence before giving up (None waits forever).
        verify: check every payload's checksum.
        stream: accept only this stream id (default: the first one seen).
        key: the stream's :class:`~beamstream.security.streamkey.StreamKey` (or its text) if the stream is
            sealed: every message is opened with it; one it does not open (forged, altered, not sealed)
            is refused, counted in ``report.forged``, logged once per reason, never delivered (a forged
            end message does not end the stream). A group member also proves with it to a buffer that
            requires the stream's admission key. Without a key, a sealed message raises SealRefused
            (this stream needs its key): encrypted bytes are never handed out as data.

    Reading producers directly (no ``group``, not ``nats://``):
        bind: bind the endpoints instead of connecting (producers then connect).
        pattern: ``pull`` (default) or ``sub`` (broadcast streams). Either way the client
            acknowledges each end-of-stream message upstream, so producers close only once it arrived.
        hwm: messages queued in this client before the sender waits (default 4).

    Reading through a buffer (``group``, ``nats://`` or ``http(s)://``):
        group: read as a member of this consumer group; members of a group share the messages,
            every group gets all of them. A message is acknowledged when the application asks
            for the next one, so one a client was still working on when it died goes to
            another member. With the local buffer, ``hwm`` is how many messages the buffer may
            hand this client before it acknowledges one.
        lossy: always hand over the newest message, skipping older ones (counted in
            ``report.skipped``), e.g. for a live viewer.
        start: where a group that does not exist yet starts: ``earliest`` (default) message
            held, or ``now``.
        redeliver_after: ``nats://`` with a group this client creates: seconds after which a
            message a member has not acknowledged goes to another member (default 30; the local
            buffer instead notices a departed member within a second).

    tls: ``(cert, key, ca)`` for an ``https://`` stream of a service with mutual TLS: the client
        certificate and key (PEM; both or neither) and the CA certificate that verifies the service
        (None: the system's). Only for ``https://``.
    token: a bearer token of that service (``POST /v1/tokens``), for a reader without a certificate
        (``tls=(None, None, ca)``); sent in the relay's ``Authorization`` header. Only for ``https://``.

    max_message: the largest frame this client takes (default 1 GiB); a sender of a larger one
        is disconnected before it is allocated (a NATS server bounds its own messages).

    An option given where it does not apply raises OptionError saying where it does.

    ``metadata`` is the stream's description (:class:`~beamstream.wire.metadata.RunMetadata`:
    experiment, run, constants, each field's source and geometry) once the client knows it: by
    the time the first message is yielded, from that message or from the buffer.
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float | None = 10.0, bind: bool = False,
                 pattern: Literal["pull", "sub"] = "pull", verify: bool = True, stream: str | None = None,
                 hwm: int | None = None, group: str | None = None, lossy: bool = False,
                 start: Literal["earliest", "now"] | None = None, redeliver_after: float | None = None,
                 max_message: int = DEFAULT_MAX_MESSAGE, tls: tuple | None = None, token: str | None = None,
                 key: StreamKey | str | None = None) -> None:
        endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not endpoints:
            raise OptionError("Client needs an endpoint to read")
        key = _stream_key(key)
        transport = _pick_transport(endpoints, bind=bind, pattern=pattern, hwm=hwm, group=group, lossy=lossy,
                                    start=start, redeliver_after=redeliver_after, max_message=max_message, tls=tls,
                                    token=token, key=key)
        self._setup(transport, endpoints, timeout=timeout, verify=verify, stream=stream, key=key)

    @classmethod
    def over(cls, transport: Transport, *, timeout: float | None = 10.0, verify: bool = True,
             stream: str | None = None, key: StreamKey | str | None = None) -> Client:
        """A Client reading from ``transport`` (e.g. a :class:`~beamstream.client.transports.memory.MemoryTransport`)."""
        client = cls.__new__(cls)
        client._setup(transport, [transport.where], timeout=timeout, verify=verify, stream=stream,
                      key=_stream_key(key))
        return client

    def _setup(self, transport: Transport, endpoints: list[str], *, timeout: float | None, verify: bool,
               stream: str | None, key: StreamKey | None = None) -> None:
        self.transport = transport
        self.key = key
        self.endpoints = endpoints
        self.timeout = timeout
        self.verify = verify
        self.report = StreamReport(endpoints=endpoints, stream=stream)
        self._seen: set[tuple[int, int]] = set()
        self._metadata: RunMetadata | None = None
        self._warn_once = WarnOnce(logger)
        self._closed = False

    @property
    def metadata(self) -> RunMetadata | None:
        """The stream's description: from the first message that carried it, else from the buffer; None if unknown."""
        return self._metadata or self.transport.metadata()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the socket or connection; safe to call twice."""
        if not self._closed:
            self._closed = True
            self.transport.close()

    def messages(self) -> Iterator[Message]:
        """Data messages in arrival order, each once, until the stream has ended."""
        if self._closed:
            raise TransportError("this Client is closed; create a new one to read again")
        for item in self.transport.deliveries(self.timeout):
            if item is None:
                self._silent()
            if isinstance(item, StreamEnd):
                self.report.verdict = item.verdict
                self.report.skipped = item.skipped if item.skipped is not None else self.report.skipped
                break
            if item.skipped is not None:
                self.report.skipped = item.skipped
            try:
                message = parse_message(item.frames, verify=self.verify, key=self.key)
            except SealRefused as exc:
                self._refuse(item, str(exc), forged=True)
                continue
            except WireFormatError as exc:
                self._refuse(item, str(exc))
                continue
            if message.seal and self.key is None:
                self._refuse(item, "this stream is sealed")
                raise SealRefused(f"stream {message.stream!r} from {self.transport.where} is sealed: its messages are "
                                  "encrypted and can be read only with the stream's key (Client(..., key=...), "
                                  "`beamstream consume --key-file FILE`; its owner gets it from the request service, "
                                  "GET /v1/streams/ID/credentials)")
            if self._foreign(message):
                item.refuse(f"this consumer reads stream {self.report.stream!r}, not {message.stream!r}")
            else:
                try:
                    accepted = self._accept(message)
                except WireFormatError as exc:  # a payload this reader cannot decode: refused, the stream goes on
                    self._refuse(item, str(exc))
                    continue
                item.receipt(message)
                if accepted is not None:
                    yield accepted
            item.done()
            if not self.transport.ends_with_verdict and self.report.all_ended:
                break
        if not self.report.complete:
            raise StreamIncomplete(f"the stream ended incomplete:\n{self.report.summary()}", self.report)

    def events(self) -> Iterator[Event]:
        """Events of every message, in arrival order."""
        for message in self.messages():
            yield from message.events()

    def _refuse(self, item: Delivery, reason: str, forged: bool = False) -> None:
        """Refuse a message that is not a readable beamstream message (malformed, or its payload does not match
        its checksum) or, ``forged``, not sealed with this client's key: tell its sender where the transport
        can, count it, log it once per reason, go on."""
        if forged:
            self.report.forged += 1
        else:
            self.report.refused += 1
        self._warn_once(reason, "refused a%s message from %s: %s", " forged" if forged else "",
                        self.transport.where, reason)
        item.refuse(reason)
        item.done()

    def _foreign(self, message: DataMessage | EndMessage) -> bool:
        """True (counted, and logged once per stream id) for a message of another stream than the one
        this client reads: the one given as ``stream``, else the first it heard of."""
        if self.report.stream is None:
            self.report.stream = message.stream
            logger.info("reading stream %s from %s", message.stream, self.transport.where)
        if message.stream == self.report.stream:
            return False
        self.report.foreign += 1
        self._warn_once(f"stream {message.stream}", "refused a message of stream %r from %s: this consumer reads "
                        "stream %r", message.stream, self.transport.where, self.report.stream)
        return True

    def _accept(self, message: DataMessage | EndMessage) -> Message | None:
        """The message with its arrays, accounted for; None for an end message or a duplicate. WireFormatError
        (nothing accounted) for a payload this reader cannot decode."""
        if isinstance(message, EndMessage):
            self.report.add_end(message)
            return None
        key = (message.rank, message.index)
        if key in self._seen:
            self.report.duplicates += 1
            return None
        arrays = decode_payload(message)
        self._seen.add(key)
        self.report.add_data(message)
        if message.metadata is not None and self._metadata is None:
            self._metadata = message.metadata
        return Message(message, arrays, time.time())

    def _silent(self) -> None:
        """Raise for a stream that said nothing for ``timeout`` seconds."""
        where = self.transport.where
        if self.report.producers is None:
            raise StreamTimeout(f"nothing arrived from {where} within {self.timeout} s: is a producer sending there?")
        if self.transport.ends_with_verdict:
            raise StreamIncomplete(f"{where} sent nothing for {self.timeout} s and has not ended the stream "
                                   f"(this consumer got {self.report.events} events)", self.report)
        raise StreamIncomplete(
            f"the stream from {where} went silent for {self.timeout} s before it ended:\n{self.report.summary()}",
            self.report,
        )


def _stream_key(key: StreamKey | str | None) -> StreamKey | None:
    """``key`` as a StreamKey (text is the key's ``to_text()``); StreamKeyError for malformed text."""
    return StreamKey.from_text(key) if isinstance(key, str) else key


def _pick_transport(endpoints: list[str], *, bind: bool, pattern: str, hwm: int | None, group: str | None,
                    lossy: bool, start: str | None, redeliver_after: float | None, max_message: int,
                    tls: tuple | None = None, token: str | None = None, key: StreamKey | None = None) -> Transport:
    """The transport for these endpoints and options; OptionError for an option that does not apply to it."""
    # a group member proves to a buffer that requires it that it holds the stream's admission key
    admission = {} if key is None else {"admission": key.admission}
    def refuse(option: str, applies: str) -> None:
        raise OptionError(f"{option} applies only {applies}; it was given for {', '.join(endpoints)}"
                          + (f" with group={group!r}" if group else ""))

    if tls is not None and not endpoints[0].startswith("https://"):
        refuse("tls=(cert, key, ca)", "to https:// streams of a request service (read through its relay)")
    if token is not None and not endpoints[0].startswith("https://"):
        refuse("token", "to https:// streams of a request service (a token must not cross a network in clear)")
    if endpoints[0].startswith("nats://"):
        if len(endpoints) > 1:
            refuse("a second endpoint", "to streams read from producers directly (a nats:// stream is one URL)")
        for given, option in ((bind, "bind"), (pattern != "pull", "pattern='sub'"), (hwm is not None, "hwm")):
            if given:
                refuse(option, "to streams read from producers directly or from a local buffer, not nats://")
        if redeliver_after is not None and (group is None or lossy):
            refuse("redeliver_after", "to a lossless group (group=..., lossy=False) of a nats:// stream")
        from beamstream.client.transports.nats import NatsTransport

        return NatsTransport(endpoints[0], group=group, lossy=lossy, start=start or "earliest",
                             redeliver_after=DEFAULT_REDELIVER_AFTER if redeliver_after is None else redeliver_after,
                             **admission)
    if redeliver_after is not None:
        refuse("redeliver_after", "to a group of a nats:// stream (the local buffer notices a departed member itself)")
    relayed = endpoints[0].startswith(("http://", "https://"))
    if relayed and group is None:
        raise OptionError(f"{endpoints[0]} is read through the service's relay as a member of a consumer group: "
                          "give group=...")
    if group is not None:
        if len(endpoints) > 1:
            refuse("a second endpoint", "to streams read from producers directly (a group reads one buffer)")
        if bind:
            refuse("bind", "to streams read from producers directly (a group member connects to its buffer)")
        if pattern != "pull":
            refuse("pattern='sub'", "to streams read from producers directly (every group gets every message)")
        if relayed:
            from beamstream.client.transports.relay import RelayTransport

            return RelayTransport(endpoints[0], group=group, lossy=lossy, start=start or "earliest",
                                  credit=DEFAULT_HWM if hwm is None else hwm, max_message=max_message, tls=tls,
                                  token=token, **admission)
        from beamstream.client.transports.group import GroupTransport

        return GroupTransport(endpoints[0], group=group, lossy=lossy, start=start or "earliest",
                              credit=DEFAULT_HWM if hwm is None else hwm, max_message=max_message, **admission)
    if lossy:
        refuse("lossy", "with group=... (a buffer's consumer group) or a nats:// stream")
    if start is not None:
        refuse("start", "with group=... (a buffer's consumer group) or a nats:// stream")
    from beamstream.client.transports.direct import DirectTransport

    return DirectTransport(endpoints, bind=bind, pattern=pattern, hwm=DEFAULT_HWM if hwm is None else hwm,
                           max_message=max_message)
