"""Keep a beamstream stream in NATS JetStream: it outlives one machine and several can read it.

Layout of stream ``name`` (JetStream stream ``BEAMSTREAM_<name>``, subjects ``beamstream.<name>.>``):

- ``beamstream.<name>.data``: one JetStream message per beamstream data message. A message
  that fits the server's ``max_payload`` is stored **inline**: its frames concatenated, with
  headers ``Bs-Msg`` (``<store id>-<n>``, unique per appending store) and ``Bs-Frames`` (the
  frame lengths, comma-separated). A larger one is stored as a **manifest**: empty body,
  headers ``Bs-Msg``, ``Bs-Frames``, ``Bs-Parts`` (n) and ``Bs-Part-Seqs`` (the stream
  sequence numbers of its parts, in order).
- ``beamstream.<name>.part``: the parts of split messages, headers ``Bs-Msg``, ``Bs-Part`` (i)
  and ``Bs-Parts`` (n), body the i-th slice of the concatenated frames. No consumer reads this
  subject; readers fetch parts by sequence number (JetStream direct get). The manifest is
  published only after every part is stored, so a reader never sees half a message, and all
  parts of a message go to the one group member that got its manifest.
- ``beamstream.<name>.end``: end-of-stream messages, stored the same way.
- ``beamstream.<name>.verdict``: written by the buffer once every producer has ended (or
  went silent): msgpack ``{complete, summary, missing}`` about everything stored, the same
  verdict the local buffer sends its groups. The newest one counts.

``Bs-Msg`` is ``<stream id>-<rank>-<index>`` (``…-end`` for an end message) and is also the
``Nats-Msg-Id``, so the server drops a message stored twice within its duplicate window
(a buffer resending after a lost PubAck, or a producer resending after a reconnect).

Members of a lossless group share one durable pull consumer named after the group, filtered
on the data subject, so each message goes to one member of each group; a message not
acknowledged within the consumer's ``ack_wait`` is delivered again (possibly to another
member). A lossy reader (:class:`NatsLatestReader`) has an ephemeral consumer of its own that
delivers headers only; it reads the newest message in full and counts the ones it passed over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StreamConfig

from beamstream.buffer.nats_url import check_name
from beamstream.buffer.protocol import pack, unpack
from beamstream.errors import TransportError
from beamstream.wire import DataMessage, EndMessage, parse_message

log = logging.getLogger(__name__)
T = TypeVar("T")
_Self = TypeVar("_Self", bound="_UsesConnection")
HEADER_ROOM = 1024  # bytes kept free in every part for its headers (they need < 200)
NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


class NatsConnection:
    """A synchronous NATS connection: one asyncio loop in a background thread runs nats-py.

    Promises: every call returns within its timeout; every failure (no server, timeout,
    JetStream error) is raised as TransportError whose text names the server URL.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"nats {url}", daemon=True)
        self.thread.start()
        try:
            self.nc = self.call(self._connect(), prefix=f"no NATS server at {url}")
        except BaseException:
            self._stop_loop()
            raise
        self.js = self.nc.jetstream(timeout=timeout)

    async def _connect(self) -> Any:
        """Connect once (one retry after 0.1 s); raise the connection's own error if that fails."""
        failures: list[Exception] = []

        async def report(exc: Exception) -> None:
            failures.append(exc)
            log.debug("NATS at %s: %s", self.url, exc)

        try:
            return await nats.connect(self.url, connect_timeout=self.timeout, error_cb=report, allow_reconnect=False,
                                      max_reconnect_attempts=1, reconnect_time_wait=0.1)
        except nats.errors.NoServersError:
            raise failures[-1] if failures else nats.errors.NoServersError() from None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None, prefix: str | None = None) -> T:
        """Run ``coro`` on the loop and return its result; TransportError on failure or after ``timeout``."""
        timeout = self.timeout if timeout is None else timeout
        prefix = prefix or f"NATS server at {self.url}"
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransportError(f"{prefix}: no answer within {timeout:g} s") from None
        except NATS_ERRORS as exc:
            raise TransportError(f"{prefix}: {exc or type(exc).__name__}") from exc

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (its ``max_payload``; 1 MiB unless configured)."""
        return self.nc.max_payload

    def close(self) -> None:
        """Close the connection and stop the loop thread; safe to call twice."""
        if self.loop.is_closed():
            return
        try:
            self.call(self.nc.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def stream_names(name: str) -> tuple[str, str]:
    """(JetStream stream name, subject prefix) of beamstream stream ``name``."""
    check_name("stream name", name)
    return f"BEAMSTREAM_{name}", f"beamstream.{name}"


def header_bytes(headers: dict[str, str]) -> int:
    """Bytes the NATS header block of ``headers`` takes on the wire (counted in max_payload)."""
    return len("NATS/1.0\r\n\r\n") + sum(len(key) + len(value) + 4 for key, value in headers.items())


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into consecutive slices of at most ``size`` bytes."""
    return [data[start:start + size] for start in range(0, len(data), size)]


def join_frames(frames: Sequence[Any]) -> tuple[bytes, str]:
    """The frames concatenated, and their lengths as a ``Bs-Frames`` header value."""
    views = [memoryview(frame.buffer if hasattr(frame, "buffer") else frame) for frame in frames]
    return b"".join(views), ",".join(str(view.nbytes) for view in views)


def cut_frames(data: bytes, lengths: str) -> list[memoryview]:
    """Frames of ``data`` by the ``Bs-Frames`` value ``lengths``: views, no copies."""
    view, frames, start = memoryview(data), [], 0
    for length in map(int, lengths.split(",")):
        frames.append(view[start:start + length])
        start += length
    if start != len(data):
        raise TransportError(f"stored message has {len(data)} bytes, its Bs-Frames say {start}")
    return frames


class _UsesConnection:
    """Owns ``self.conn``; closing (or leaving a ``with`` block) closes it. For a group reader
    that means leaving the group: its durable consumer, position and pending messages stay on the server."""

    conn: NatsConnection

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NatsStore(_UsesConnection):
    """Appends beamstream messages to JetStream stream ``BEAMSTREAM_<name>`` (created if missing).

    A stream this store creates keeps messages ``max_age_s`` seconds (None: until deleted) and
    at most ``max_bytes`` bytes (None: no bound); when full, the server refuses new messages
    (nothing stored is discarded) and :meth:`append` raises TransportError saying so. An
    existing stream keeps its own limits.

    Promises: when :meth:`append` returns, the message is stored by the server (every part's
    PubAck arrived); messages appended by one store keep their order on the data subject.
    """

    def __init__(self, url: str, stream_name: str, timeout: float = 10.0, max_age_s: float | None = None,
                 max_bytes: int | None = None) -> None:
        self.stream, self.prefix = stream_names(stream_name)
        self.conn = NatsConnection(url, timeout)
        try:
            self.conn.call(self._ensure_stream(max_age_s, max_bytes))
        except BaseException:
            self.conn.close()
            raise

    async def _ensure_stream(self, max_age_s: float | None, max_bytes: int | None) -> None:
        try:
            await self.conn.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.conn.js.add_stream(StreamConfig(
                name=self.stream, subjects=[f"{self.prefix}.>"], allow_direct=True, max_age=max_age_s,
                max_bytes=max_bytes or -1, discard=DiscardPolicy.NEW))

    def append(self, frames: Sequence[Any], message: DataMessage | EndMessage | None = None) -> int:
        """Store one beamstream message (all its frames); returns its stream sequence number.

        ``message`` is its parsed header, if the caller has it already. Raises WireFormatError
        if ``frames`` is not a beamstream message, TransportError if the server does not store
        it within the timeout.
        """
        message = message or parse_message(frames, verify=False)
        kind = "end" if isinstance(message, EndMessage) else "data"
        data, lengths = join_frames(frames)
        suffix = "end" if kind == "end" else str(message.index)
        headers = {"Bs-Msg": f"{message.stream}-{message.rank}-{suffix}", "Bs-Frames": lengths}
        subject = f"{self.prefix}.{kind}"
        if header_bytes(headers) + len(data) <= self.conn.max_payload:
            return self.conn.call(self._publish(subject, data, headers))
        parts = split(data, self.conn.max_payload - HEADER_ROOM)
        timeout = self.conn.timeout * (1 + len(parts) // 16)
        return self.conn.call(self._publish_split(subject, parts, headers), timeout=timeout)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> int:
        msg_id = headers["Bs-Msg"] + (f"-part-{headers['Bs-Part']}" if "Bs-Part" in headers else "")
        ack = await self.conn.js.publish(subject, data, stream=self.stream, headers={**headers, "Nats-Msg-Id": msg_id})
        return ack.seq

    async def _publish_split(self, subject: str, parts: list[bytes], headers: dict[str, str]) -> int:
        count = str(len(parts))
        part_subject = f"{self.prefix}.part"
        seqs = await asyncio.gather(*(
            self._publish(part_subject, part, {"Bs-Msg": headers["Bs-Msg"], "Bs-Part": str(i), "Bs-Parts": count})
            for i, part in enumerate(parts)
        ))
        manifest = {**headers, "Bs-Parts": count, "Bs-Part-Seqs": ",".join(map(str, seqs))}
        return await self._publish(subject, b"", manifest)

    def write_verdict(self, complete: bool, summary: str, missing: list[tuple[int, int]]) -> None:
        """Store the stream's verdict (readers end with the newest one)."""
        data = pack("verdict", complete=complete, summary=summary, missing=[list(pair) for pair in missing])
        self.conn.call(self.conn.js.publish(f"{self.prefix}.verdict", data, stream=self.stream))

    def stored(self) -> Iterator[DataMessage | EndMessage]:
        """Every message stored so far (data, then ends), parsed from its header frame alone.

        One request per message, and an inline message comes whole: meant for rebuilding a
        buffer's account of the stream after a restart, not for reading data.
        """
        for kind in ("data", "end"):
            seq = 0
            while (found := self.conn.call(_next_on(self.conn, self.stream, f"{self.prefix}.{kind}", seq + 1))):
                seq = found.seq
                yield parse_message(self.conn.call(_frames(self.conn, self.stream, found, first_only=True)),
                                    verify=False)

    def delete(self) -> None:
        """Delete the JetStream stream with every message and consumer in it."""
        self.conn.call(self.conn.js.delete_stream(self.stream))


async def _next_on(conn: NatsConnection, stream: str, subject: str, seq: int) -> Any:
    """The first message on ``subject`` at or after stream sequence ``seq``, or None."""
    try:
        return await conn.js.get_msg(stream, seq, subject=subject, direct=True, next=True)
    except nats.js.errors.NotFoundError:
        return None


async def _frames(conn: NatsConnection, stream: str, msg: Any, first_only: bool = False) -> list[memoryview]:
    """The frames of a stored message (inline or manifest), its parts fetched by sequence number.

    With ``first_only`` just the header frame, from the first part alone.
    """
    headers = msg.headers or {}
    if "Bs-Part-Seqs" not in headers:
        frames = cut_frames(msg.data, headers["Bs-Frames"])
        return frames[:1] if first_only else frames
    seqs = [int(seq) for seq in headers["Bs-Part-Seqs"].split(",")]
    lengths = headers["Bs-Frames"]
    if first_only:
        seqs, lengths = seqs[:1], lengths.split(",")[0]
    parts = await asyncio.gather(*(conn.js.get_msg(stream, seq, direct=True) for seq in seqs))
    for i, part in enumerate(parts):
        if part.headers.get("Bs-Msg") != headers["Bs-Msg"] or part.headers.get("Bs-Part") != str(i):
            raise TransportError(f"{stream} sequence {seqs[i]} is not part {i} of message {headers['Bs-Msg']}")
    data = b"".join(part.data for part in parts)
    return cut_frames(data[:int(lengths)] if first_only else data, lengths)


class _NatsReader(_UsesConnection):
    """What every reader of stream ``name`` has: its pull subscription and the stream's verdict.

    A reader may come before its stream: until a buffer creates the stream, fetches find
    nothing (each waits its timeout) and there is no verdict.
    """

    def __init__(self, url: str, stream_name: str, timeout: float, durable: str | None,
                 config: ConsumerConfig) -> None:
        self.stream, self.prefix = stream_names(stream_name)
        self.durable, self.config = durable, config
        self.sub: Any = None
        self.conn = NatsConnection(url, timeout)
        try:
            self._subscribed()
        except BaseException:
            self.conn.close()
            raise

    def _subscribed(self) -> bool:
        """Subscribe if not yet done; False while the stream does not exist."""
        if self.sub is None:
            try:
                self.sub = self.conn.call(self.conn.js.pull_subscribe(
                    f"{self.prefix}.data", durable=self.durable, stream=self.stream, config=self.config))
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
        return self.conn.call(self._next(timeout, batch), timeout=timeout + self.conn.timeout)

    async def _next(self, timeout: float, batch: int = 1) -> list[Any]:
        try:
            return await self.sub.fetch(batch, timeout=timeout)
        except nats.errors.TimeoutError:
            return []

    def settled(self) -> bool:
        """True if this reader's consumer has nothing left: no message pending, none awaiting an ack."""
        if not self._subscribed():
            return False
        info = self.conn.call(self.sub.consumer_info())
        return info.num_pending == 0 and not info.num_ack_pending

    def verdict(self) -> dict[str, Any] | None:
        """The stream's newest verdict (``complete``, ``summary``, ``missing``), or None before there is one."""
        if not self._subscribed():
            return None
        found = self.conn.call(self._last(f"{self.prefix}.verdict"))
        return None if found is None else unpack(found.data)

    async def _last(self, subject: str) -> Any:
        try:
            return await self.conn.js.get_msg(self.stream, subject=subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None


class NatsGroupReader(_NatsReader):
    """One member of consumer group ``group`` of stream ``name``: a durable pull consumer.

    Members of one group (in any process, on any machine) share the messages; every group
    sees all of them. A group that does not exist yet starts at the earliest stored message
    (``start="earliest"``) or at the next one appended (``start="now"``); an existing group
    goes on where it is. ``ack_wait`` applies only when this call creates the group. With
    ``group=None`` the reader has an ephemeral consumer of its own (the server removes it a
    minute after the reader stops asking).
    """

    def __init__(self, url: str, stream_name: str, group: str | None, start: str = "earliest",
                 ack_wait: float = 30.0, timeout: float = 10.0) -> None:
        config = ConsumerConfig(
            durable_name=None if group is None else check_name("group", group), ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait, deliver_policy=_deliver_policy(start), inactive_threshold=None if group else 60.0,
        )
        super().__init__(url, stream_name, timeout, group, config)

    def fetch(self, timeout: float) -> tuple[list[memoryview], Callable[[], None]] | None:
        """The next message of the group as (frames, ack), or None if none came within ``timeout``.

        Calling ``ack()`` returns once the server has recorded the acknowledgement; a message
        not acknowledged within ``ack_wait`` goes to a member again.
        """
        found = self._fetch(timeout)
        if not found:
            return None
        msg = found[0]
        frames = self.conn.call(_frames(self.conn, self.stream, msg))
        return frames, lambda: self.conn.call(msg.ack_sync(self.conn.timeout))


class NatsLatestReader(_NatsReader):
    """A lossy reader of stream ``name`` (a live viewer): always the newest message, never a backlog.

    Its ephemeral consumer delivers only the headers of data messages; :meth:`fetch` takes
    every header waiting, reads the newest message whole and counts the others in ``skipped``.
    ``start="earliest"`` counts the messages stored before it began as skipped too; ``now``
    waits for the next one.
    """

    BATCH = 1024

    def __init__(self, url: str, stream_name: str, start: str = "earliest", timeout: float = 10.0) -> None:
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, headers_only=True, deliver_policy=_deliver_policy(start),
                                inactive_threshold=60.0)
        self.skipped = 0
        super().__init__(url, stream_name, timeout, None, config)

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
        newest = self.conn.call(self.conn.js.get_msg(self.stream, found[-1].metadata.sequence.stream, direct=True))
        return self.conn.call(_frames(self.conn, self.stream, newest)), lambda: None


def _deliver_policy(start: str) -> DeliverPolicy:
    if start not in ("earliest", "now"):
        raise ValueError(f"start must be 'earliest' or 'now', not {start!r}")
    return DeliverPolicy.ALL if start == "earliest" else DeliverPolicy.NEW
