"""``NatsStore``: append a beamstream stream's messages and verdicts to NATS JetStream (the buffer's side).

Layout of the stream: :mod:`beamstream.wire.nats`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import nats.js.errors
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from beamstream.errors import BeamstreamError, WireFormatError
from beamstream.jetstream.connection import (STREAM_ELECTED, Ends, NatsConnection, ServerUnavailable, UsesConnection,
                                             next_on, stored_frames)
from beamstream.wire import DataMessage, EndMessage, parse_message
from beamstream.wire import nats as layout
from beamstream.wire.control import Verdict, pack
from beamstream.wire.metadata import RunMetadata

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey

logger = logging.getLogger(__name__)


class MessageIdTaken(BeamstreamError):
    """The server already held another record under a message's ``Nats-Msg-Id`` (within its duplicate
    window), so it dropped the message as a duplicate: the message is not stored (nor would it be if sent
    again under that id within the window)."""


class NatsStore(UsesConnection):
    """Appends beamstream messages to JetStream stream ``BEAMSTREAM_<name>`` (created if missing).

    A stream this store creates is spread over ``streams`` JetStream streams (None: 1; the data message at log
    position p, with its parts, in shard ``p % streams``: :mod:`beamstream.wire.nats`), each kept in files on
    ``replicas`` servers of the cluster (None: 1),
    keeps messages ``max_age_s`` seconds (None: until deleted) and at most ``max_bytes`` bytes
    (None: no bound); when full, the server refuses new messages (nothing stored is discarded) and
    :meth:`append` raises TransportError saying so. An existing stream keeps its own settings (a
    different number of replicas or of streams is logged; ``streams`` then says the stream's own).

    Given the stream's ``admission`` key (a sealed stream), each record's ``Nats-Msg-Id`` is one
    nobody without the stream's credentials can compute (:class:`~beamstream.wire.nats.MessageIds`),
    and :meth:`stored` yields only messages sealed with that key.

    Promises: when :meth:`append` returns, the message is stored by the server (every part's
    PubAck arrived: of a stream with replicas, sent by its leader once a majority of them wrote it, so
    losing any minority of the servers loses none of it; and where the server answered that it
    already had a record under the id, that record is this one: same subject, body and headers);
    messages appended by one store keep their order on the data subject: the data (or end) record of a
    message submitted (:meth:`submit`) after another is published only once the other's PubAck came (their
    parts may be in flight together), and not at all if the other was not stored (TransportError).
    """

    def __init__(self, url: str, name: str, timeout: float = 10.0, max_age_s: float | None = None,
                 max_bytes: int | None = None, admission: AdmissionKey | None = None,
                 replicas: int | None = None, streams: int | None = None) -> None:
        self.name = name
        self.stream = layout.stream_name(name)
        self.admission = admission
        self.ids = layout.MessageIds(admission)
        self.streams = streams or 1
        self.positions = 0  # the log position after the last stored data message (read by stored())
        self.tail: asyncio.Future[Any] | None = None  # the last message submitted (on the loop)
        self.conn = NatsConnection(url, timeout)
        try:
            self.conn.call(self._ensure_stream(max_age_s, max_bytes, replicas, streams))
            self.conn.watch(*(STREAM_ELECTED.format(stream=layout.stream_name(name, shard))
                              for shard in range(self.streams)))
        except BaseException:
            self.conn.close()
            raise

    async def _ensure_stream(self, max_age_s: float | None, max_bytes: int | None, replicas: int | None,
                             streams: int | None) -> None:
        """Create the stream's JetStream streams that are missing (shard 0's description saying how many); an
        existing stream keeps its replicas and its spread (``self.streams``)."""
        try:
            info = await self.conn.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            self.streams = layout.spread_of(info.config.description)
            if streams is not None and streams != self.streams:
                logger.warning("%s exists spread over %d JetStream streams, not the %d asked for: it keeps its own",
                               self.stream, self.streams, streams)
            if replicas is not None and info.config.num_replicas != replicas:
                logger.warning("%s exists with %s replicas, not the %d asked for: it keeps its own (change it with "
                               "the nats CLI: nats stream edit %s --replicas %d)", self.stream,
                               info.config.num_replicas, replicas, self.stream, replicas)
            replicas = info.config.num_replicas
        elif max_age_s is not None:
            logger.warning("%s keeps records %g s (--retention), read or not: a group made after the first ones aged "
                           "out ends incomplete, and one that falls further behind loses records untold "
                           "(docs/nats-backend.md, Limits)", self.stream, max_age_s)
        for shard in range(self.streams):
            if shard == 0 and info is not None:
                continue
            config = StreamConfig(
                name=layout.stream_name(self.name, shard), subjects=[layout.subject(self.name, ">", shard)],
                allow_direct=True, max_age=max_age_s, max_bytes=max_bytes or -1, discard=DiscardPolicy.NEW,
                storage=StorageType.FILE, num_replicas=replicas or 1,
                description=layout.spread_description(self.streams) if shard == 0 else None)
            try:
                await self.conn.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:  # made by an earlier buffer with other settings
                logger.info("%s exists already (%s): it keeps its own settings", config.name, exc)

    def append(self, frames: Sequence[Any], message: DataMessage | EndMessage | None = None, position: int = 0) -> int:
        """Store one beamstream message (all its frames) and wait for it (:meth:`submit`); its sequence number in
        its JetStream stream. Raises what :meth:`submit`'s future raises, TransportError after the timeout too."""
        # each PubAck is awaited up to the timeout: the parts' together, then the record's
        return self.conn.result(self.submit(frames, message, position), 2 * self.conn.timeout)

    def submit(self, frames: Sequence[Any], message: DataMessage | EndMessage | None = None,
               position: int = 0, fresh: bool = False) -> concurrent.futures.Future[int]:
        """Start storing one beamstream message (all its frames), at log ``position`` if it is a data message (of a
        stream spread over several: in shard ``position % streams``, header ``Bs-Pos``); a future of its sequence
        number in its JetStream stream, stored in the order submitted (see the class).

        ``message`` is its parsed header, if the caller has it already. Raises WireFormatError at once if
        ``frames`` is not a beamstream message; the future raises TransportError if the server does not store it
        within the timeout, or an earlier message submitted was not stored (so this one is not either: submit
        both again, in order), MessageIdTaken if the server holds another record under the id of the message (or
        of one of its parts) and so did not store it. ``fresh``: stored whether or not the messages submitted
        before were (for the first of those the caller submits again after a failure, once none is in progress).
        """
        message = message or parse_message(frames, verify=False)
        data, lengths = layout.join_frames(frames)
        headers = {layout.MSG: layout.message_id(message), layout.FRAMES: lengths}
        shard = 0
        if isinstance(message, DataMessage) and self.streams > 1:
            shard, headers[layout.POS] = position % self.streams, str(position)
        subject = layout.subject(self.name, "end" if isinstance(message, EndMessage) else "data", shard)
        parts = None
        if layout.header_bytes(headers) + len(data) > self.conn.max_payload:
            parts = layout.split(memoryview(data), self.conn.max_payload - layout.HEADER_ROOM)  # views: no copy
        return self.conn.submit(self._store(shard, subject, data if parts is None else parts, headers, fresh))

    async def _store(self, shard: int, subject: str, body: bytes | list[memoryview], headers: dict[str, str],
                     fresh: bool) -> int:
        """Store a message's parts (``body`` a list of them) in flight with those of messages submitted before, then,
        once the message submitted before is stored (unless ``fresh``), its data (or end) record."""
        previous, self.tail = (None if fresh else self.tail), asyncio.current_task()
        stream = layout.stream_name(self.name, shard)
        if isinstance(body, list):
            seqs = await asyncio.gather(*(
                self._publish(stream, layout.subject(self.name, "part", shard), part,
                              {layout.MSG: headers[layout.MSG], layout.PART: str(i), layout.PARTS: str(len(body))})
                for i, part in enumerate(body)))
            headers = {**headers, layout.PARTS: str(len(body)), layout.PART_SEQS: ",".join(map(str, seqs))}
            body = b""
        if previous is not None:
            await asyncio.wait({previous})
            failed = previous.cancelled() or previous.exception()
            if failed and not isinstance(failed, MessageIdTaken):
                raise ServerUnavailable(f"{self.conn.url}: not storing {headers[layout.MSG]} before the message "
                                        "submitted ahead of it, which was not stored")
        return await self._publish(stream, subject, body, headers)

    async def _publish(self, stream: str, subject: str, data: bytes | memoryview, headers: dict[str, str]) -> int:
        """Store one record; its sequence number. MessageIdTaken if the server answers that it already has
        the record's id and what it has there is another record; ServerUnavailable at once if the stream elects
        a leader or the connection moves meanwhile (sent again, the server drops a second copy by its id)."""
        ack = await self.conn.until_turned(self.conn.js.publish(  # a PubAck the lost leader owed: sent again
            subject, data, stream=stream, headers={**headers, layout.MSG_ID: self.ids.of(headers)}))
        if ack.duplicate and not await self._holds(stream, ack.seq, subject, data, headers):
            raise MessageIdTaken(f"{stream} already holds another record (sequence {ack.seq}) under the "
                                 f"message id of {layout.record_identity(headers)}, and dropped it as a duplicate")
        return ack.seq

    async def _holds(self, stream: str, seq: int, subject: str, data: bytes | memoryview,
                     headers: dict[str, str]) -> bool:
        """True if the record at ``seq`` is the one with this subject, body and headers (a copy stored before:
        this store's own resend); False for any other record, or none."""
        try:
            stored = await self.conn.js.get_msg(stream, seq, direct=True)
        except nats.js.errors.NotFoundError:
            return False
        found = stored.headers or {}
        return (stored.subject == subject and (stored.data or b"") == data
                and all(found.get(key) == value for key, value in headers.items()))

    def write_metadata(self, metadata: RunMetadata) -> None:
        """Store the stream's description (readers take the newest one)."""
        self.conn.call(self.conn.js.publish(layout.subject(self.name, "metadata"), msgspec.msgpack.encode(metadata),
                                            stream=self.stream))

    def write_verdict(self, verdict: Verdict) -> None:
        """Store the stream's verdict (readers end with the newest one; of a sealed stream, with the newest that
        proves it was written with the admission key: ``Bs-Proof``)."""
        body = pack(verdict)
        headers = None if self.admission is None else {layout.PROOF: layout.verdict_proof(self.admission, body)}
        self.conn.call(self.conn.js.publish(layout.subject(self.name, "verdict"), body, stream=self.stream,
                                            headers=headers))

    def stored(self) -> Iterator[DataMessage | EndMessage]:
        """Every message stored so far (data, then ends), parsed from its header frame (and seal) alone.

        With the admission key, only messages sealed with it: any other record (one published to the
        server by someone else) is skipped and logged, as is a record that is not a beamstream message.
        One request per message (a split one's last parts too, for its seal), and an inline message
        comes whole: meant for rebuilding a buffer's account of the stream after a restart, not for
        reading data. Of a spread stream, sets ``positions`` past the highest ``Bs-Pos`` read.
        """
        only: Ends = "first" if self.admission is None else "first and last"
        skipped, first = 0, ""
        for shard, kind in [*((shard, "data") for shard in range(self.streams)), (0, "end")]:
            seq = 0
            stream, subject = layout.stream_name(self.name, shard), layout.subject(self.name, kind, shard)
            while (found := self.conn.call(next_on(self.conn, stream, subject, seq + 1))):
                seq = found.seq
                try:
                    message = parse_message(self.conn.call(stored_frames(self.conn, stream, found, only)),
                                            verify=False, admission=self.admission)
                    if kind == "data" and self.streams > 1:
                        self.positions = max(self.positions, layout.position(found.headers or {}) + 1)
                except WireFormatError as exc:  # SealRefused too
                    skipped, first = skipped + 1, first or f"{stream} sequence {seq}: {exc}"
                    continue
                yield message
        if skipped:
            logger.warning("skipped %d records of %s that are not messages of this stream's producers (the first, %s)",
                           skipped, self.stream, first)

    def delete(self) -> None:
        """Delete the JetStream stream (every one it is spread over) with every message and consumer in it."""
        for shard in range(self.streams):
            self.conn.call(self.conn.js.delete_stream(layout.stream_name(self.name, shard)))
