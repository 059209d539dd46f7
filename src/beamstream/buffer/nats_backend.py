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

Group members share one durable pull consumer named after the group, filtered on the data
subject, so each message goes to one member of each group; a message not acknowledged within
the consumer's ``ack_wait`` is delivered again (possibly to another member).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from beamstream.errors import TransportError
from beamstream.wire import EndMessage, parse_message

log = logging.getLogger(__name__)
T = TypeVar("T")
_Self = TypeVar("_Self", bound="_UsesConnection")
NAME = re.compile(r"[A-Za-z0-9_-]+")
HEADER_ROOM = 1024  # bytes kept free in every part for its headers (they need < 200)
NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


def check_name(kind: str, name: str) -> str:
    """``name`` if it is usable as a NATS subject token and stream/consumer name, else ValueError."""
    if not NAME.fullmatch(name):
        raise ValueError(f"{kind} {name!r} may contain only letters, digits, '_' and '-'")
    return name


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

    Promises: when :meth:`append` returns, the message is stored by the server (every part's
    PubAck arrived); messages appended by one store keep their order on the data subject.
    """

    def __init__(self, url: str, stream_name: str, timeout: float = 10.0) -> None:
        self.stream, self.prefix = stream_names(stream_name)
        self.conn = NatsConnection(url, timeout)
        self.store_id = uuid.uuid4().hex[:12]
        self.count = 0
        try:
            self.conn.call(self._ensure_stream())
        except BaseException:
            self.conn.close()
            raise

    async def _ensure_stream(self) -> None:
        try:
            await self.conn.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.conn.js.add_stream(StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"],
                                                       allow_direct=True))

    def append(self, frames: Sequence[Any]) -> int:
        """Store one beamstream message (all its frames); returns its stream sequence number.

        Raises WireFormatError if ``frames`` is not a beamstream message, TransportError if
        the server does not store it within the timeout.
        """
        message = parse_message(frames, verify=False)
        kind = "end" if isinstance(message, EndMessage) else "data"
        data, lengths = join_frames(frames)
        self.count += 1
        headers = {"Bs-Msg": f"{self.store_id}-{self.count}", "Bs-Frames": lengths}
        subject = f"{self.prefix}.{kind}"
        if header_bytes(headers) + len(data) <= self.conn.max_payload:
            return self.conn.call(self._publish(subject, data, headers))
        parts = split(data, self.conn.max_payload - HEADER_ROOM)
        timeout = self.conn.timeout * (1 + len(parts) // 16)
        return self.conn.call(self._publish_split(subject, parts, headers), timeout=timeout)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> int:
        ack = await self.conn.js.publish(subject, data, stream=self.stream, headers=headers)
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

    def delete(self) -> None:
        """Delete the JetStream stream with every message and consumer in it."""
        self.conn.call(self.conn.js.delete_stream(self.stream))



class NatsGroupReader(_UsesConnection):
    """One member of consumer group ``group`` of stream ``name``: a durable pull consumer.

    Members of one group (in any process, on any machine) share the messages; every group
    sees all of them. A group that does not exist yet starts at the earliest stored message
    (``start="earliest"``) or at the next one appended (``start="now"``); an existing group
    goes on where it is. ``ack_wait`` applies only when this call creates the group.
    """

    def __init__(self, url: str, stream_name: str, group: str, start: str = "earliest",
                 ack_wait: float = 30.0, timeout: float = 10.0) -> None:
        if start not in ("earliest", "now"):
            raise ValueError(f"start must be 'earliest' or 'now', not {start!r}")
        self.stream, self.prefix = stream_names(stream_name)
        config = ConsumerConfig(
            durable_name=check_name("group", group), ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait,
            deliver_policy=DeliverPolicy.ALL if start == "earliest" else DeliverPolicy.NEW,
        )
        self.conn = NatsConnection(url, timeout)
        try:
            self.sub = self.conn.call(self.conn.js.pull_subscribe(
                f"{self.prefix}.data", durable=group, stream=self.stream, config=config))
        except BaseException:
            self.conn.close()
            raise
        self.end_messages: list[EndMessage] = []
        self.end_seq = 0

    def fetch(self, timeout: float) -> tuple[list[memoryview], Callable[[], None]] | None:
        """The next message of the group as (frames, ack), or None if none came within ``timeout``.

        Calling ``ack()`` returns once the server has recorded the acknowledgement; a message
        not acknowledged within ``ack_wait`` goes to a member again.
        """
        msg = self.conn.call(self._next(timeout), timeout=timeout + self.conn.timeout)
        if msg is None:
            return None
        frames = self.conn.call(self._frames(msg))
        return frames, lambda: self.conn.call(msg.ack_sync(self.conn.timeout))

    async def _next(self, timeout: float) -> Any:
        try:
            (msg,) = await self.sub.fetch(1, timeout=timeout)
        except nats.errors.TimeoutError:
            return None
        return msg

    async def _frames(self, msg: Any) -> list[memoryview]:
        """The frames of a stored message (inline or manifest), its parts fetched by sequence number."""
        headers = msg.headers or {}
        if "Bs-Part-Seqs" not in headers:
            return cut_frames(msg.data, headers["Bs-Frames"])
        seqs = [int(seq) for seq in headers["Bs-Part-Seqs"].split(",")]
        parts = await asyncio.gather(*(self.conn.js.get_msg(self.stream, seq, direct=True) for seq in seqs))
        for i, part in enumerate(parts):
            if part.headers.get("Bs-Msg") != headers["Bs-Msg"] or part.headers.get("Bs-Part") != str(i):
                raise TransportError(f"{self.stream} sequence {seqs[i]} is not part {i} of message {headers['Bs-Msg']}")
        return cut_frames(b"".join(part.data for part in parts), headers["Bs-Frames"])

    def ends(self) -> list[EndMessage]:
        """Every end-of-stream message stored so far, in stream order (this call reads the new ones)."""
        while (found := self.conn.call(self._next_end())) is not None:
            self.end_seq = found.seq
            self.end_messages.append(parse_message(self.conn.call(self._frames(found))))
        return list(self.end_messages)

    async def _next_end(self) -> Any:
        try:
            return await self.conn.js.get_msg(self.stream, self.end_seq + 1, subject=f"{self.prefix}.end",
                                              direct=True, next=True)
        except nats.js.errors.NotFoundError:
            return None

