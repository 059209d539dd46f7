"""Readers of a beamstream stream kept in NATS JetStream (the client's side): group members and lossy readers.

Members of a lossless group share one durable pull consumer named after the group, filtered
on the data subject, so each message goes to one member of each group; a message not
acknowledged within the consumer's ``ack_wait`` is delivered again (possibly to another
member). A lossy reader (:class:`NatsLatestReader`) has an ephemeral consumer of its own that
delivers headers only; it reads the newest message in full and counts the ones it passed over.
Layout of the stream: :mod:`beamstream.wire.nats`. A record on the data subject that does not
follow it (published there by someone else) stops no reader: it is handed over as its body alone,
one frame, for the Client to judge as every message (one that is not a beamstream message is
refused, counted and acknowledged).

Over a cluster a reader rides out a failover: every request (fetch, acknowledgement, reads of
the verdict and of stored parts) that fails the way a lost server or a leader election makes it
fail is tried again for up to a minute (:meth:`~beamstream.jetstream.connection.NatsConnection.call_retried`)
while the connection moves to another server; one awaiting an answer when the connection moves or
the reader's consumer elects a leader is asked again at once. Every reader's consumer (a group's durable one, and
an ephemeral one too) has as many replicas as its stream, so it outlives the loss of a minority of
the servers.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from beamstream.errors import TransportError, WireFormatError
from beamstream.jetstream.connection import (CONSUMER_ELECTED, NatsConnection, UsesConnection, last_on, next_on,
                                             stored_frames)
from beamstream.logs import WarnOnce
from beamstream.wire import nats as layout
from beamstream.wire.control import Verdict, unpack
from beamstream.wire.frames import decode
from beamstream.wire.metadata import RunMetadata

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey

Start = Literal["earliest", "now"]
logger = logging.getLogger(__name__)
_metadata = msgspec.msgpack.Decoder(RunMetadata)


class NatsReader(UsesConnection, ABC):
    """What every reader of stream ``name`` has: its pull subscription and the stream's verdict.

    A reader may come before its stream: until a buffer creates the stream, fetches find
    nothing (each waits its timeout) and there is no verdict. Given the stream's ``admission`` key (a sealed
    stream), only verdicts that prove they were written with it count: anyone may publish to the server.
    """

    def __init__(self, url: str, name: str, timeout: float, durable: str | None, config: ConsumerConfig,
                 admission: AdmissionKey | None = None) -> None:
        self.name = name
        self.admission = admission
        self.stream = layout.stream_name(name)
        self.durable, self.config = durable, config
        self.sub: Any = None
        self.skipped = 0
        self.warn_once = WarnOnce(logger)
        self.conn = NatsConnection(url, timeout)
        try:
            self._subscribed()
        except BaseException:
            self.conn.close()
            raise

    def _subscribed(self) -> bool:
        """Subscribe if not yet done; False while the stream does not exist. An ephemeral consumer is kept on as
        many servers as the stream (the server would keep it on one, and lose it with that one). Requests wait no
        longer for an answer once the consumer elects a leader (the one that owed it may be gone)."""
        if self.sub is None:
            try:
                if self.durable is None:
                    info = self.conn.call_retried(lambda: self.conn.js.stream_info(self.stream))
                    self.config.num_replicas = info.config.num_replicas
                self.sub = self.conn.call_retried(lambda: self.conn.js.pull_subscribe(
                    layout.subject(self.name, "data"), durable=self.durable, stream=self.stream, config=self.config))
                consumer = self.durable or self.conn.call_retried(self.sub.consumer_info).name
                self.conn.watch(CONSUMER_ELECTED.format(stream=self.stream, consumer=consumer))
            except TransportError as exc:
                if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                    raise
        return self.sub is not None

    def _fetch(self, timeout: float, batch: int = 1) -> list[Any]:
        """Up to ``batch`` messages, waiting at most ``timeout`` for the first (the stream's arrival included)."""
        if not self._subscribed():
            time.sleep(timeout)  # polling for the stream to be created: there is no event for it
            if not self._subscribed():
                return []
        return self.conn.call_retried(lambda: self._next(timeout, batch), timeout=timeout + self.conn.timeout)

    async def _next(self, timeout: float, batch: int = 1) -> list[Any]:
        try:
            return await self.sub.fetch(batch, timeout=timeout)
        except nats.errors.TimeoutError:
            return []

    def _frames(self, msg: Any) -> list[Any]:
        """The frames of a fetched record; for one that does not follow :mod:`beamstream.wire.nats`, its body
        alone as one frame (the Client refuses it unless it is a whole beamstream message), the reason logged once."""
        try:
            return self.conn.call_retried(lambda: stored_frames(self.conn, self.stream, msg))
        except WireFormatError as exc:
            self.warn_once("layout", "records of %s that do not follow the beamstream layout are handed over as their "
                           "body alone (the first: %s)", self.stream, exc)
            return [msg.data or b""]

    @abstractmethod
    def fetch(self, timeout: float) -> tuple[list[memoryview], Callable[[], None]] | None:
        """The next message as (frames, ack), or None if none came within ``timeout``."""

    def settled(self) -> bool:
        """True if this reader's consumer has nothing left: no message pending, none awaiting an ack."""
        if not self._subscribed():
            return False
        info = self.conn.call_retried(self.sub.consumer_info)
        return info.num_pending == 0 and not info.num_ack_pending

    def metadata(self) -> RunMetadata | None:
        """The stream's newest description, or None before there is one (or if it is unreadable: logged)."""
        if not self._subscribed():
            return None
        found = self.conn.call_retried(lambda: last_on(self.conn, self.stream, layout.subject(self.name, "metadata")))
        if found is None:
            return None
        try:
            return decode(_metadata, found.data, "stream description")
        except WireFormatError as exc:
            logger.warning("ignored the stream's description in %s: %s", self.stream, exc)
            return None

    def verdict(self) -> Verdict | None:
        """The stream's newest verdict (with the admission key: the newest the buffer wrote), or None before there
        is one."""
        if not self._subscribed():
            return None
        subject = layout.subject(self.name, "verdict")
        found = self.conn.call_retried(lambda: last_on(self.conn, self.stream, subject))
        if found is not None and self.admission is not None and not self._proven(found):
            self.warn_once("verdict", "ignored verdict records in %s that the stream's buffer did not write (no proof "
                                      "of its admission key)", self.stream)
            found, seq = None, 1
            while (record := self.conn.call_retried(lambda: next_on(self.conn, self.stream, subject, seq))) is not None:
                found, seq = (record if self._proven(record) else found), record.seq + 1
        return None if found is None else unpack(found.data, Verdict)

    def _proven(self, record: Any) -> bool:
        return layout.verdict_proven(self.admission, record.data, (record.headers or {}).get(layout.PROOF))


class NatsGroupReader(NatsReader):
    """One member of consumer group ``group`` of stream ``name``: a durable pull consumer.

    Members of one group (in any process, on any machine) share the messages; every group
    sees all of them. A group that does not exist yet starts at the earliest stored message
    (``start="earliest"``) or at the next one appended (``start="now"``); an existing group
    goes on where it is. ``ack_wait`` applies only when this call creates the group. With
    ``group=None`` the reader has an ephemeral consumer of its own (the server removes it a
    minute after the reader stops asking).
    """

    def __init__(self, url: str, name: str, group: str | None, start: Start = "earliest",
                 ack_wait: float = 30.0, timeout: float = 10.0, admission: AdmissionKey | None = None) -> None:
        config = ConsumerConfig(
            durable_name=None if group is None else layout.check_name("group", group),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, deliver_policy=_deliver_policy(start),
            inactive_threshold=None if group else 60.0,
        )
        super().__init__(url, name, timeout, group, config, admission)

    def fetch(self, timeout: float) -> tuple[list[memoryview], Callable[[], None]] | None:
        """The next message of the group as (frames, ack), or None if none came within ``timeout``.

        Calling ``ack()`` returns once the server has recorded the acknowledgement; a message
        not acknowledged within ``ack_wait`` goes to a member again.
        """
        found = self._fetch(timeout)
        if not found:
            return None
        msg = found[0]
        return self._frames(msg), lambda: self.conn.call_retried(lambda: msg.ack_sync(self.conn.timeout))


class NatsLatestReader(NatsReader):
    """A lossy reader of stream ``name`` (a live viewer): always the newest message, never a backlog.

    Its ephemeral consumer delivers only the headers of data messages; :meth:`fetch` takes
    every header waiting, reads the newest message whole and counts the others in ``skipped``.
    ``start="earliest"`` counts the messages stored before it began as skipped too; ``now``
    waits for the next one.
    """

    BATCH = 1024

    def __init__(self, url: str, name: str, start: Start = "earliest", timeout: float = 10.0,
                 admission: AdmissionKey | None = None) -> None:
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, headers_only=True, deliver_policy=_deliver_policy(start),
                                inactive_threshold=60.0)
        super().__init__(url, name, timeout, None, config, admission)

    def fetch(self, timeout: float) -> tuple[list[memoryview], Callable[[], None]] | None:
        """The newest message as (frames, ack), or None if none came within ``timeout``; ack does nothing."""
        found = self._fetch(timeout, self.BATCH)
        while len(found) % self.BATCH == 0 and found:  # a full batch: more may be waiting
            more = self._fetch(0.05, self.BATCH)
            found += more
            if not more:
                break
        if not found:
            return None
        self.skipped += len(found) - 1
        newest = self.conn.call_retried(lambda: self.conn.js.get_msg(self.stream, found[-1].metadata.sequence.stream,
                                                                     direct=True))
        return self._frames(newest), lambda: None


def _deliver_policy(start: str) -> DeliverPolicy:
    if start not in ("earliest", "now"):
        raise ValueError(f"start must be 'earliest' or 'now', not {start!r}")
    return DeliverPolicy.ALL if start == "earliest" else DeliverPolicy.NEW
