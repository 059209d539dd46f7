"""A synchronous NATS connection, and reading stored beamstream messages back from JetStream.

nats-py is asyncio only; :class:`NatsConnection` runs its loop in a background thread so that
the buffer's and the client's synchronous code can call it with a timeout.

Over a cluster (several servers in the URL) a connection whose server is lost moves to another
one by itself; calls made meanwhile fail (TransportError) and :meth:`NatsConnection.call_retried`
tries the idempotent ones again until the cluster has elected new leaders. A request whose answer
was to come from a server that is gone is not waited for: :meth:`NatsConnection.until_turned` gives
up on it as soon as the connection moves or JetStream announces a new leader.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, TypeVar

import nats
import nats.errors
import nats.js.errors

from beamstream.errors import TransportError, WireFormatError
from beamstream.jetstream.urls import servers
from beamstream.retrying import retrying
from beamstream.wire import nats as layout

logger = logging.getLogger(__name__)
T = TypeVar("T")
_Self = TypeVar("_Self", bound="UsesConnection")
Ends = Literal["first", "first and last"]
NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
STREAM_ELECTED = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}"  # JetStream's advisories: a stream's …
CONSUMER_ELECTED = "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{consumer}"  # … or a consumer's leader
RECONNECT_WAIT_S = 0.25  # pause before trying a server again that was just tried …
RECONNECT_ATTEMPTS = 240  # … and how often, once connected, before giving it up: a minute per server
FAILOVER_S = 60.0  # how long call_retried tries again: a lost server's place taken, JetStream leaders elected
PASSING = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.StaleConnectionError,
           nats.errors.ConnectionReconnectingError, nats.js.errors.ServiceUnavailableError,
           nats.js.errors.NoStreamResponseError, OSError, asyncio.TimeoutError)


class ServerUnavailable(TransportError):
    """A NATS request failed the way a failover makes it fail (no answer in time, nobody answering the subject,
    the connection being remade, JetStream unavailable while it elects a leader): trying again in a few seconds
    is likely to work."""


class NatsConnection:
    """A synchronous NATS connection: one asyncio loop in a background thread runs nats-py.

    ``url`` is ``nats://HOST:PORT``, or several comma-separated (the servers of one cluster): the
    connection is made to any of them that answers, and when its server is lost it reconnects to
    another (or the same, back again) for up to a minute per server, resubscribing as it goes.

    Promises: every call returns within its timeout; every failure (no server, timeout,
    JetStream error, the server lost meanwhile) is raised as TransportError whose text names the
    server URL (ServerUnavailable where a failover would explain it); :meth:`call_retried` tries
    those again for ``failover_s`` seconds first.
    """

    def __init__(self, url: str, timeout: float = 5.0, failover_s: float = FAILOVER_S) -> None:
        self.url = url
        self.timeout = timeout
        self.failover_s = failover_s
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
        """Connect to one of the servers (each tried twice, 0.1 s apart); raise the connection's own error if none
        answers. Once connected, a lost server is replaced by another for up to RECONNECT_ATTEMPTS tries each."""
        failures: list[Exception] = []
        self.turned: asyncio.Future[None] = self.loop.create_future()

        async def report(exc: Exception) -> None:
            failures.append(exc)
            logger.debug("NATS at %s: %s", self.url, exc)

        async def moved() -> None:
            logger.info("lost a NATS server of %s; reconnected to %s", self.url,
                        nc.connected_url.netloc if nc.connected_url else "another")
            self._turn()

        try:
            nc = await nats.connect(servers(self.url), connect_timeout=self.timeout, error_cb=report,
                                    reconnected_cb=moved, max_reconnect_attempts=1, reconnect_time_wait=0.1)
        except nats.errors.NoServersError:
            raise failures[-1] if failures else nats.errors.NoServersError() from None
        # nats-py takes one setting for the first connection and for reconnecting: connect quickly or fail
        # (above), then keep reconnecting through a failover (its options are read at each attempt).
        nc.options.update(max_reconnect_attempts=RECONNECT_ATTEMPTS, reconnect_time_wait=RECONNECT_WAIT_S)
        return nc

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None, prefix: str | None = None) -> T:
        """Run ``coro`` on the loop and return its result; TransportError on failure or after ``timeout``."""
        return self.result(self.submit(coro), timeout, prefix)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop (coroutines start in the order submitted); its result: :meth:`result`."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def result(self, future: concurrent.futures.Future[T], timeout: float | None = None,
               prefix: str | None = None) -> T:
        """The result of a :meth:`submit`; TransportError on failure or after ``timeout`` (then cancelled)."""
        timeout = self.timeout if timeout is None else timeout
        prefix = prefix or f"NATS server at {self.url}"
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ServerUnavailable(f"{prefix}: no answer within {timeout:g} s") from None
        except NATS_ERRORS as exc:
            error = ServerUnavailable if isinstance(exc, PASSING) else TransportError
            raise error(f"{prefix}: {exc or type(exc).__name__}") from exc

    def call_retried(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float | None = None) -> T:
        """``call(until_turned(make()))``, tried again (pauses growing to 5 s) while it raises ServerUnavailable,
        for up to ``failover_s`` seconds: for idempotent requests only (reads, acknowledgements), which a failover
        (a server lost, a stream or consumer leader being elected) makes fail for a few seconds. Any other
        TransportError is raised at once; one that lasts, after ``failover_s``."""
        result: T
        for attempt in retrying(ServerUnavailable, for_s=self.failover_s):
            with attempt:
                result = self.call(self.until_turned(make()), timeout)
        return result

    def watch(self, *subjects: str) -> None:
        """Take every message on ``subjects`` (JetStream's advisories that a leader was elected: STREAM_ELECTED,
        CONSUMER_ELECTED) as a turn, like the connection moving to another server (:meth:`until_turned`)."""

        async def turn(_: Any) -> None:
            self._turn()

        for subject in subjects:
            self.call(self.nc.subscribe(subject, cb=turn))

    async def until_turned(self, coro: Coroutine[Any, Any, T]) -> T:
        """The result of ``coro``; ServerUnavailable (``coro`` cancelled) if a turn comes first: the connection moves
        to another server, or a leader is elected (:meth:`watch`). An answer awaited then may never come: the
        server that was to send it may be gone; asking again reaches the one that has taken its place."""
        turned = self.turned
        task = asyncio.ensure_future(coro)
        try:
            await asyncio.wait({task, turned}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # a turn, or this call cancelled (its timeout): the request is dropped with it
            answered = task.done()
            if not answered:
                task.cancel()
                task.add_done_callback(lambda done: done.cancelled() or done.exception())  # its end is of no interest
        if not answered:
            raise ServerUnavailable(f"NATS server at {self.url}: a JetStream leader was elected, or the connection "
                                    "moved to another server, before the answer came")
        return task.result()

    def _turn(self) -> None:
        """Resolve the current turn (waking every until_turned) and start the next."""
        turned, self.turned = self.turned, self.loop.create_future()
        turned.set_result(None)

    @property
    def closed(self) -> bool:
        """True once the connection is closed for good: closed here, or its servers lost for longer than
        reconnecting tries (a connection reconnecting is not closed)."""
        return self.nc.is_closed

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


class UsesConnection:
    """Owns ``self.conn``; closing (or leaving a ``with`` block) closes it. For a group reader
    that means leaving the group: its durable consumer, position and pending messages stay on the server."""

    conn: NatsConnection

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def next_on(conn: NatsConnection, stream: str, subject: str, seq: int) -> Any:
    """The first message on ``subject`` at or after stream sequence ``seq``, or None."""
    try:
        return await conn.js.get_msg(stream, seq, subject=subject, direct=True, next=True)
    except nats.js.errors.NotFoundError:
        return None


async def last_on(conn: NatsConnection, stream: str, subject: str) -> Any:
    """The newest message on ``subject``, or None."""
    try:
        return await conn.js.get_msg(stream, subject=subject, direct=True)
    except nats.js.errors.NotFoundError:
        return None


async def stored_frames(conn: NatsConnection, stream: str, msg: Any, only: Ends | None = None) -> list[memoryview]:
    """The frames of a stored message (inline or manifest), its parts fetched by sequence number.

    With ``only="first"`` just the header frame, from the first part alone; with ``"first and
    last"`` the header frame and the last one (a sealed message's seal), from as few parts as hold
    them (one frame only: just that one). Raises WireFormatError if the record does not follow
    :mod:`beamstream.wire.nats`.
    """
    headers = msg.headers or {}
    if layout.FRAMES not in headers:
        seq = msg.seq if hasattr(msg, "seq") else msg.metadata.sequence.stream  # a stored or a delivered message
        raise WireFormatError(f"{stream} sequence {seq} has no {layout.FRAMES} header: not a beamstream message")
    if layout.PART_SEQS not in headers:
        frames = layout.cut_frames(msg.data or b"", headers[layout.FRAMES])
        return frames if only is None else _ends(frames, only)
    seqs = layout.part_seqs(headers[layout.PART_SEQS])
    if only is None:
        return layout.cut_frames(b"".join(await _parts(conn, stream, headers, seqs, range(len(seqs)))),
                                 headers[layout.FRAMES])
    lengths = layout.frame_lengths(headers[layout.FRAMES])
    first = b"".join(await _parts(conn, stream, headers, seqs, [0]))[:lengths[0]]
    frames = layout.cut_frames(first, str(lengths[0]))
    if only == "first" or len(lengths) == 1:
        return frames
    return frames + [memoryview(await _tail(conn, stream, headers, seqs, lengths[-1]))]


def _ends(frames: list[memoryview], only: Ends) -> list[memoryview]:
    """The first of ``frames`` (``only="first"``), or the first and the last (just one if there is one)."""
    return frames[:1] if only == "first" or len(frames) == 1 else [frames[0], frames[-1]]


async def _parts(conn: NatsConnection, stream: str, headers: dict[str, str], seqs: list[int],
                 numbers: Sequence[int]) -> list[bytes]:
    """The bodies of parts ``numbers`` of the manifest with ``headers`` (parts at ``seqs``); WireFormatError if
    a record there is not that part of that message."""
    parts = await asyncio.gather(*(conn.js.get_msg(stream, seqs[i], direct=True) for i in numbers))
    for i, part in zip(numbers, parts):
        if part.headers.get(layout.MSG) != headers.get(layout.MSG) or part.headers.get(layout.PART) != str(i):
            raise WireFormatError(f"{stream} sequence {seqs[i]} is not part {i} of message {headers.get(layout.MSG)}")
    return [part.data or b"" for part in parts]


async def _tail(conn: NatsConnection, stream: str, headers: dict[str, str], seqs: list[int], nbytes: int) -> bytes:
    """The last ``nbytes`` bytes of the manifest's parts, read from its last part backwards; WireFormatError
    if the parts hold fewer."""
    tail = b""
    for i in reversed(range(len(seqs))):
        if len(tail) >= nbytes:
            break
        tail = (await _parts(conn, stream, headers, seqs, [i]))[0] + tail
    if len(tail) < nbytes:
        raise WireFormatError(f"the parts of message {headers.get(layout.MSG)} in {stream} hold fewer bytes than "
                              f"its {layout.FRAMES} header says")
    return tail[len(tail) - nbytes:]
