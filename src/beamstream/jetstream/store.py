"""``NatsStore``: append a beamstream stream's messages and verdicts to NATS JetStream (the buffer's side).

Layout of the stream: :mod:`beamstream.wire.nats`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import nats.js.errors
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from beamstream.errors import BeamstreamError, WireFormatError
from beamstream.jetstream.connection import (STREAM_ELECTED, Ends, NatsConnection, UsesConnection, next_on,
                                             stored_frames)
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

    A stream this store creates is kept in files on ``replicas`` servers of the cluster (None: 1),
    keeps messages ``max_age_s`` seconds (None: until deleted) and at most ``max_bytes`` bytes
    (None: no bound); when full, the server refuses new messages (nothing stored is discarded) and
    :meth:`append` raises TransportError saying so. An existing stream keeps its own settings (a
    different number of replicas is logged).

    Given the stream's ``admission`` key (a sealed stream), each record's ``Nats-Msg-Id`` is one
    nobody without the stream's credentials can compute (:class:`~beamstream.wire.nats.MessageIds`),
    and :meth:`stored` yields only messages sealed with that key.

    Promises: when :meth:`append` returns, the message is stored by the server (every part's
    PubAck arrived: of a stream with replicas, sent by its leader once a majority of them wrote it, so
    losing any minority of the servers loses none of it; and where the server answered that it
    already had a record under the id, that record is this one: same subject, body and headers);
    messages appended by one store keep their order on the data subject.
    """

    def __init__(self, url: str, name: str, timeout: float = 10.0, max_age_s: float | None = None,
                 max_bytes: int | None = None, admission: AdmissionKey | None = None,
                 replicas: int | None = None) -> None:
        self.name = name
        self.stream = layout.stream_name(name)
        self.admission = admission
        self.ids = layout.MessageIds(admission)
        self.conn = NatsConnection(url, timeout)
        try:
            self.conn.call(self._ensure_stream(max_age_s, max_bytes, replicas))
            self.conn.watch(STREAM_ELECTED.format(stream=self.stream))
        except BaseException:
            self.conn.close()
            raise

    async def _ensure_stream(self, max_age_s: float | None, max_bytes: int | None, replicas: int | None) -> None:
        try:
            info = await self.conn.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.conn.js.add_stream(StreamConfig(
                name=self.stream, subjects=[layout.subject(self.name, ">")], allow_direct=True, max_age=max_age_s,
                max_bytes=max_bytes or -1, discard=DiscardPolicy.NEW, storage=StorageType.FILE,
                num_replicas=replicas or 1))
            return
        if replicas is not None and info.config.num_replicas != replicas:
            logger.warning("%s exists with %s replicas, not the %d asked for: it keeps its own (change it with the "
                           "nats CLI: nats stream edit %s --replicas %d)", self.stream, info.config.num_replicas,
                           replicas, self.stream, replicas)

    def append(self, frames: Sequence[Any], message: DataMessage | EndMessage | None = None) -> int:
        """Store one beamstream message (all its frames); returns its stream sequence number.

        ``message`` is its parsed header, if the caller has it already. Raises WireFormatError
        if ``frames`` is not a beamstream message, TransportError if the server does not store
        it within the timeout, MessageIdTaken if the server holds another record under the id of
        the message (or of one of its parts) and so did not store it.
        """
        message = message or parse_message(frames, verify=False)
        data, lengths = layout.join_frames(frames)
        headers = {layout.MSG: layout.message_id(message), layout.FRAMES: lengths}
        subject = layout.subject(self.name, "end" if isinstance(message, EndMessage) else "data")
        if layout.header_bytes(headers) + len(data) <= self.conn.max_payload:
            return self.conn.call(self._publish(subject, data, headers))
        parts = layout.split(data, self.conn.max_payload - layout.HEADER_ROOM)
        timeout = self.conn.timeout * (1 + len(parts) // 16)
        return self.conn.call(self._publish_split(subject, parts, headers), timeout=timeout)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> int:
        """Store one record; its sequence number. MessageIdTaken if the server answers that it already has
        the record's id and what it has there is another record; ServerUnavailable at once if the stream elects
        a leader or the connection moves meanwhile (sent again, the server drops a second copy by its id)."""
        ack = await self.conn.until_turned(self.conn.js.publish(  # a PubAck the lost leader owed: sent again
            subject, data, stream=self.stream, headers={**headers, layout.MSG_ID: self.ids.of(headers)}))
        if ack.duplicate and not await self._holds(ack.seq, subject, data, headers):
            raise MessageIdTaken(f"{self.stream} already holds another record (sequence {ack.seq}) under the "
                                 f"message id of {layout.record_identity(headers)}, and dropped it as a duplicate")
        return ack.seq

    async def _holds(self, seq: int, subject: str, data: bytes, headers: dict[str, str]) -> bool:
        """True if the record at ``seq`` is the one with this subject, body and headers (a copy stored before:
        this store's own resend); False for any other record, or none."""
        try:
            stored = await self.conn.js.get_msg(self.stream, seq, direct=True)
        except nats.js.errors.NotFoundError:
            return False
        found = stored.headers or {}
        return (stored.subject == subject and (stored.data or b"") == data
                and all(found.get(key) == value for key, value in headers.items()))

    async def _publish_split(self, subject: str, parts: list[bytes], headers: dict[str, str]) -> int:
        count = str(len(parts))
        part_subject = layout.subject(self.name, "part")
        seqs = await asyncio.gather(*(
            self._publish(part_subject, part, {layout.MSG: headers[layout.MSG], layout.PART: str(i),
                                               layout.PARTS: count})
            for i, part in enumerate(parts)
        ))
        manifest = {**headers, layout.PARTS: count, layout.PART_SEQS: ",".join(map(str, seqs))}
        return await self._publish(subject, b"", manifest)

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
        reading data.
        """
        only: Ends = "first" if self.admission is None else "first and last"
        skipped, first = 0, ""
        for kind in ("data", "end"):
            seq = 0
            subject = layout.subject(self.name, kind)
            while (found := self.conn.call(next_on(self.conn, self.stream, subject, seq + 1))):
                seq = found.seq
                try:
                    message = parse_message(self.conn.call(stored_frames(self.conn, self.stream, found, only)),
                                            verify=False, admission=self.admission)
                except WireFormatError as exc:  # SealRefused too
                    skipped, first = skipped + 1, first or f"sequence {seq}: {exc}"
                    continue
                yield message
        if skipped:
            logger.warning("skipped %d records of %s that are not messages of this stream's producers (the first, %s)",
                           skipped, self.stream, first)

    def delete(self) -> None:
        """Delete the JetStream stream with every message and consumer in it."""
        self.conn.call(self.conn.js.delete_stream(self.stream))
