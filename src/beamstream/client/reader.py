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
picked once from the endpoint's scheme and checked against the options it takes
(:mod:`~beamstream.client.transports.schemes`), or given ready-made (``Client(transport=...)``);
parsing, checksums, duplicates and the account are done here, the same for all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Unpack

import numpy as np

from beamstream.accounting import StreamReport
from beamstream.client.transports.base import Delivery, Options, StreamEnd, Transport
from beamstream.client.transports.schemes import open_transport
from beamstream.codecs import decode_payload
from beamstream.errors import OptionError, SealRefused, StreamIncomplete, StreamTimeout, TransportError, WireFormatError
from beamstream.logs import WarnOnce
from beamstream.security.streamkey import StreamKey
from beamstream.wire import DataMessage, EndMessage, parse_message
from beamstream.wire.metadata import RunMetadata

logger = logging.getLogger(__name__)


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
    """Reads one stream, from ``endpoints`` through the transport their scheme picks, or through ``transport``.

    Args:
        endpoints: an endpoint or a list (e.g. one per producer that binds its own), read as
            :mod:`~beamstream.client.transports.schemes` says: ``tcp://``, ``ipc://`` or ``inproc://``
            producers directly or, with ``group``, a buffer's consumer group; ``http(s)://SERVICE/v1/streams/ID``
            a stream of the request service, as a member of ``group``, through the service's relay (a WebSocket;
            docs/relay.md), for a reader that can reach the service but not its buffer; ``nats://HOST:PORT/NAME``
            the stream a buffer keeps in NATS JetStream (``beamstream buffer --backend``), read as a member of
            ``group`` or, without one, whole by this client alone.
        transport: instead of endpoints, a :class:`~beamstream.client.transports.base.Transport` already made
            (e.g. a :class:`~beamstream.client.transports.memory.MemoryTransport`), given with its own options.
        timeout: seconds of silence before giving up (None waits forever).
        verify: check every payload's checksum.
        stream: accept only this stream id (default: the first one seen).
        key: the stream's :class:`~beamstream.security.streamkey.StreamKey` (or its text) if the stream is
            sealed: every message is opened with it; one it does not open (forged, altered, not sealed)
            is refused, counted in ``report.forged``, logged once per reason, never delivered (a forged
            end message does not end the stream). A group member also proves with it to a buffer that
            requires the stream's admission key. Without a key, a sealed message raises SealRefused
            (this stream needs its key): encrypted bytes are never handed out as data.
        options: the transport's (:class:`~beamstream.client.transports.base.Options`): ``bind``, ``pattern``
            and ``hwm`` reading producers directly; ``group``, ``lossy``, ``start`` and ``hwm`` (its credit)
            reading a buffer's consumer group or the relay; ``group``, ``lossy``, ``start`` and
            ``redeliver_after`` reading ``nats://``; ``tls`` and ``token`` reading ``https://``; ``max_message``
            all but ``nats://``. One given where it does not apply raises OptionError saying where it does.

    ``metadata`` is the stream's description (:class:`~beamstream.wire.metadata.RunMetadata`:
    experiment, run, constants, each field's source and geometry) once the client knows it: by
    the time the first message is yielded, from that message or from the buffer.
    """

    def __init__(self, endpoints: str | Sequence[str] = (), *, transport: Transport | None = None,
                 timeout: float | None = 10.0, verify: bool = True, stream: str | None = None,
                 key: StreamKey | str | None = None, **options: Unpack[Options]) -> None:
        self.key = StreamKey.from_text(key) if isinstance(key, str) else key
        if transport is None:
            transport = open_transport(endpoints, dict(options), self.key)
            endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        elif endpoints or options:
            given = ", ".join([*([repr(endpoints)] if endpoints else []), *options])
            raise OptionError(f"Client(transport=...) takes no endpoints and no transport options ({given}): "
                              f"give them to the transport, {type(transport).__name__}")
        else:
            endpoints = [transport.where]
        self.transport = transport
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.verify = verify
        self.report = StreamReport(endpoints=self.endpoints, stream=stream)
        self._seen: set[tuple[int, int]] = set()
        self._metadata: RunMetadata | None = None
        self._warn_once = WarnOnce(logger)
        self._closed = False

    @classmethod
    def over(cls, transport: Transport, *, timeout: float | None = 10.0, verify: bool = True,
             stream: str | None = None, key: StreamKey | str | None = None) -> Client:
        """``Client(transport=transport, ...)``: a Client reading from ``transport``."""
        return cls(transport=transport, timeout=timeout, verify=verify, stream=stream, key=key)

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
            if item.problem is not None:
                self._refuse(item, item.problem)
                continue
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
        (nothing accounted) for a payload this reader cannot decode, or a message of another receiver's producers."""
        if (reason := self.report.refusal(message)) is not None:
            raise WireFormatError(reason)
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

