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

A group made after the stream's first records aged out of JetStream (its ``max_age``) never gets them, and
its verdict says so (:meth:`NatsGroupReader.verdict`); one that falls behind by more than ``max_age`` is not told.

A stream spread over N JetStream streams (:mod:`beamstream.wire.nats`; the buffer's ``?streams=N``, which
readers need not be given: shard 0's description says N) is read through one consumer per shard, of the same
name; the records are merged by log position (``Bs-Pos``): a reader alone in its group, or without one, gets the
data messages in the order the buffer stored them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from beamstream.errors import TransportError, WireFormatError
from beamstream.jetstream.connection import (CONSUMER_ELECTED, NatsConnection, ServerUnavailable, UsesConnection,
                                             last_on, next_on, stored_frames)
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
        self.sub: Any = None  # shard 0's subscription (of a stream not spread: the only one)
        self.subs: list[Any] = []  # one per shard
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
                info = self.conn.call_retried(lambda: self.conn.js.stream_info(self.stream))
                if self.durable is None:
                    self.config.num_replicas = info.config.num_replicas
                subs = [self._subscribe(shard) for shard in range(layout.spread_of(info.config.description))]
            except TransportError as exc:
                if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                    raise
            else:
                self.subs, self.sub = subs, subs[0]
        return self.sub is not None

    def _subscribe(self, shard: int) -> Any:
        """This reader's pull subscription to the data records of shard ``shard``, its consumer's elections watched."""
        stream = layout.stream_name(self.name, shard)
        sub = self.conn.call_retried(lambda: self.conn.js.pull_subscribe(
            layout.subject(self.name, "data", shard), durable=self.durable, stream=stream,
            config=self._consumer_config(shard)))
        consumer = self.durable or self.conn.call_retried(sub.consumer_info).name
        self.conn.watch(CONSUMER_ELECTED.format(stream=stream, consumer=consumer))
        return sub

    def _consumer_config(self, shard: int) -> ConsumerConfig:
        """The settings of the consumer this reader makes on shard ``shard``, if none of its name exists there."""
        return dataclasses.replace(self.config)

    def _fetch(self, timeout: float, batch: int = 1, shard: int = 0) -> list[Any]:
        """Up to ``batch`` messages of shard ``shard``, waiting at most ``timeout`` for the first (the stream's
        arrival included)."""
        if not self._subscribed():
            time.sleep(timeout)  # polling for the stream to be created: there is no event for it
            if not self._subscribed():
                return []
        sub = self.subs[shard]
        return self.conn.call_retried(lambda: self._next(sub, timeout, batch), timeout=timeout + self.conn.timeout)

    @staticmethod
    async def _next(sub: Any, timeout: float, batch: int = 1) -> list[Any]:
        try:
            return await sub.fetch(batch, timeout=timeout)
        except (nats.errors.TimeoutError, TimeoutError):
            return []

    def _frames(self, msg: Any, shard: int = 0,
                started: concurrent.futures.Future[list[memoryview]] | None = None) -> list[Any]:
        """The frames of a fetched record of shard ``shard`` (``started``: their reading, begun); for one that does
        not follow :mod:`beamstream.wire.nats`, its body alone as one frame (the Client refuses it unless it is a
        whole beamstream message), the reason logged once."""
        stream = layout.stream_name(self.name, shard)
        try:
            if started is not None:
                try:
                    return self.conn.result(started)
                except ServerUnavailable:
                    pass  # read again below, for as long as a failover takes
            return self.conn.call_retried(lambda: stored_frames(self.conn, stream, msg))
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
        infos = [self.conn.call_retried(sub.consumer_info) for sub in self.subs]
        return all(info.num_pending == 0 and not info.num_ack_pending for info in infos)

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

    Records come in batches of up to ``BATCH`` per fetch, their frames read (parts fetched) at once
    while the application takes those before: a member holds up to ``BATCH`` messages
    unacknowledged. Of a spread stream, the shards are merged by log position: the next one
    (``Bs-Pos``) if its shard has it, else (taken by another member, or never stored: its shard's
    consumer has nothing waiting) the lowest waiting, so a reader alone in its group gets the messages
    in the order the buffer stored them.
    """

    BATCH = 4
    GLANCE_S = 0.01  # how long a look into a shard waits for a record before the merge goes on without
    AGED_OUT = "beamstream: made after the stream's first records aged out"  # its consumer's description then

    def __init__(self, url: str, name: str, group: str | None, start: Start = "earliest",
                 ack_wait: float = 30.0, timeout: float = 10.0, admission: AdmissionKey | None = None) -> None:
        config = ConsumerConfig(
            durable_name=None if group is None else layout.check_name("group", group),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, deliver_policy=_deliver_policy(start),
            inactive_threshold=None if group else 60.0,
        )
        self.aged_out = False  # whether the group began after the stream's first records aged out (see verdict)
        super().__init__(url, name, timeout, group, config, admission)
        self.queues: list[deque[tuple[Any, concurrent.futures.Future[list[memoryview]]]]] = []  # per shard
        self.expected = 0  # the log position next in order (of a spread stream)

    def fetch(self, timeout: float) -> tuple[list[memoryview], Callable[[], None]] | None:
        """The next message of the group as (frames, ack), or None if none came within ``timeout``.

        Calling ``ack()`` returns once the server has recorded the acknowledgement; a message
        not acknowledged within ``ack_wait`` goes to a member again.
        """
        if not self._subscribed():
            time.sleep(timeout)  # polling for the stream to be created: there is no event for it
            if not self._subscribed():
                return None
        if not self.queues:
            self.queues = [deque() for _ in self.subs]
        shard = self._next_shard(timeout)
        if shard is None:
            return None
        msg, started = self.queues[shard].popleft()
        frames = self._frames(msg, shard, started)
        return frames, lambda: self.conn.call_retried(lambda: msg.ack_sync(self.conn.timeout))

    def verdict(self) -> Verdict | None:
        """The stream's verdict as it stands for this group: not complete, whatever the producers sent, if the
        group began after the stream's first records had aged out of JetStream (its ``max_age``, the buffer's
        ``--retention``): the group never got them. (A group that falls behind by more than ``max_age`` loses
        records too, and is not told: docs/nats-backend.md, Limits.)"""
        verdict = super().verdict()
        if verdict is None or not self.aged_out:
            return verdict
        who = f"group {self.durable!r}" if self.durable else "this reader"
        return Verdict(complete=False, missing=verdict.missing, summary=(
            f"{verdict.summary}\n{who} began after the stream's first records had aged out of NATS JetStream "
            f"(its max_age, the buffer's --retention): it never got the stream's first messages; read the stream "
            f"sooner, or keep it longer"))

    def _subscribe(self, shard: int) -> Any:
        """As every reader, and learn whether the group began after shard ``shard``'s first records aged out:
        from its consumer's description, written by the member that made it (:meth:`_consumer_config`)."""
        try:
            sub = super()._subscribe(shard)
        except TransportError as exc:  # another member made the group meanwhile, having seen otherwise: join it
            if not isinstance(exc.__cause__, nats.js.errors.BadRequestError) or self.durable is None:
                raise
            sub = super()._subscribe(shard)
        if self.config.deliver_policy is DeliverPolicy.ALL:
            info = self.conn.call_retried(sub.consumer_info)
            self.aged_out = self.aged_out or info.config.description == self.AGED_OUT
        return sub

    def _consumer_config(self, shard: int) -> ConsumerConfig:
        """A consumer this reader makes to read from the earliest record (a new group, or a reader alone) says in its
        description if shard ``shard``'s first records had aged out before it (the stream's first sequence is past
        1: nothing else removes records), so that every member of the group knows it never gets them."""
        config = super()._consumer_config(shard)
        if config.deliver_policy is DeliverPolicy.ALL:
            stream = layout.stream_name(self.name, shard)
            if self.conn.call_retried(lambda: self.conn.js.stream_info(stream)).state.first_seq > 1:
                config.description = self.AGED_OUT
        return config

    def _next_shard(self, timeout: float) -> int | None:
        """The shard whose first waiting record comes next (see the class), waiting up to ``timeout`` if none is."""
        if len(self.queues) == 1:
            if not self.queues[0]:
                self._fill(0, timeout)
            return 0 if self.queues[0] else None
        for shard, queue in enumerate(self.queues):
            if not queue:
                self._fill(shard, self.GLANCE_S)
        want = self.expected % len(self.queues)
        heads = {shard: _position(queue[0][0]) for shard, queue in enumerate(self.queues) if queue}
        if not heads:
            self._fill(want, timeout)
        elif want not in heads and min(heads.values()) > self.expected:  # stored before those, or never
            self._look(want, timeout)
        heads = {shard: _position(queue[0][0]) for shard, queue in enumerate(self.queues) if queue}
        if not heads:
            return None
        shard = min(heads, key=heads.__getitem__)
        self.expected = max(self.expected, heads[shard] + 1)
        return shard

    def _look(self, shard: int, timeout: float) -> None:
        """Fetch what ``shard`` holds for this reader, as its consumer says: records waiting for the group come within
        ``timeout``; records delivered but not acknowledged may be this reader's, come after an earlier fetch gave up
        (nats-py keeps them for the next): taken at once. None of either: nothing to wait for."""
        info = self.conn.call_retried(self.subs[shard].consumer_info)
        if info.num_pending or info.num_ack_pending:
            self._fill(shard, timeout if info.num_pending else self.GLANCE_S)

    def _fill(self, shard: int, timeout: float) -> None:
        """Fetch the records waiting in ``shard`` (up to BATCH, waiting up to ``timeout`` for the first) into its
        queue, and start reading their frames."""
        stream = layout.stream_name(self.name, shard)
        for msg in self._fetch(timeout, self.BATCH, shard):
            self.queues[shard].append((msg, self.conn.submit(stored_frames(self.conn, stream, msg))))


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
        """The newest message as (frames, ack), or None if none came within ``timeout``; ack does nothing. Of a
        spread stream: the one with the highest log position in any shard (each waited for ``timeout`` / shards)."""
        shards = len(self.subs) if self._subscribed() else 1
        found = [(shard, msg) for shard in range(shards) for msg in self._waiting(shard, timeout / shards)]
        if not found:
            return None
        self.skipped += len(found) - 1
        shard, last = max(found, key=lambda record: _position(record[1])) if shards > 1 else found[-1]
        stream = layout.stream_name(self.name, shard)
        newest = self.conn.call_retried(lambda: self.conn.js.get_msg(stream, last.metadata.sequence.stream,
                                                                     direct=True))
        return self._frames(newest, shard), lambda: None

    def _waiting(self, shard: int, timeout: float) -> list[Any]:
        """Every header waiting in ``shard`` (waiting up to ``timeout`` for the first)."""
        found = self._fetch(timeout, self.BATCH, shard)
        while len(found) % self.BATCH == 0 and found:  # a full batch: more may be waiting
            more = self._fetch(0.05, self.BATCH, shard)
            found += more
            if not more:
                break
        return found


def _position(msg: Any) -> int:
    """The log position of a fetched data record of a spread stream; -1 (first) for one without (not following the
    layout: handed over to be refused)."""
    try:
        return layout.position(msg.headers or {})
    except WireFormatError:
        return -1


def _deliver_policy(start: str) -> DeliverPolicy:
    if start not in ("earliest", "now"):
        raise ValueError(f"start must be 'earliest' or 'now', not {start!r}")
    return DeliverPolicy.ALL if start == "earliest" else DeliverPolicy.NEW
