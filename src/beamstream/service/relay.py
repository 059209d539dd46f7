"""The relay: a running stream's consumer side over a WebSocket, for readers that reach only the service.

``/v1/streams/{stream_id}/relay`` (:func:`relay`) is a pipe between the WebSocket and a
ZeroMQ DEALER connected to the stream's buffer (its ``endpoints.consumers``): the reader
(:class:`~beamstream.client.transports.relay.RelayTransport`) speaks the buffer's own consumer
protocol (docs/buffer-protocol.md) over it, and the buffer validates what it says, as it does
for any consumer. Each WebSocket message is one ZeroMQ multipart message
(:func:`~beamstream.wire.relay.join_frames`); docs/relay.md describes it.

- A stream still queued or starting is waited for, up to :data:`WAIT_FOR_RUNNING_S`, while the
  reader's latest :data:`PENDING` messages wait in the relay (before it has a buffer, a reader
  only says hello, again each second; the relay keeps reading, so the WebSocket stays alive).
- The buffer's liveness pings are not passed on: the WebSocket has a keepalive of its own, and a
  reader that is slow to read should not find its queue filled with them.
- Only who may see the stream (its owner, an admin: :mod:`beamstream.service.policy`) is relayed
  it; for anyone else it is an unknown stream.
- Admission (docs/security.md, Stream credentials): the relay reads the buffer as a consumer the
  service vouches for. A buffer given its stream's admission key admits only a hello that proves
  its sender holds that key; the relay, which keeps the stream's key and has decided who may read,
  gives every hello it forwards a fresh proof of its own (:func:`vouched`), so a reader need not
  hold the key to be admitted. Everything else, the buffer's sealed messages included, is
  forwarded unchanged: the relay never opens a payload, and a reader opens them with its own copy
  of the key (``Client(..., key=...)``).
- The WebSocket is closed with a reason the reader shows: 4404 for an unknown stream, 4410 for
  one that has ended (or ends while waited for, or whose buffer has gone silent after its end),
  1013 for one that did not start running in time, 1003 for a text message, 1007 for a message
  that is not a relay message, 1011 for a buffer that cannot be reached. A message larger than
  :data:`MAX_CLIENT_MESSAGE` is refused by the server itself (uvicorn's ``ws_max_size``, 1009).
- At most :data:`MAX_RELAYS` readers are relayed at once; one more is closed with 1013.
- The DEALER is closed as soon as either side goes away, so the buffer hands a departed
  reader's unacknowledged messages to the other members of its group; it queues at most
  :data:`~beamstream.service.relay_worker.QUEUED` messages, so a slow reader holds back its
  buffer, not the service's memory.
- The DEALER is served by a thread per reader (:class:`~beamstream.service.relay_worker.BufferLink`),
  which receives the buffer's messages and joins them into relay messages: the event loop only
  hands them to the WebSocket, and the reader's messages to the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import zmq.asyncio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from beamstream.allocator import trim_freed_buffers
from beamstream.errors import TransportError, WireFormatError
from beamstream.security.streamkey import AdmissionKey, StreamKey
from beamstream.protocol.states import State
from beamstream.service import access
from beamstream.service.access import Action
from beamstream.service.context import Context
from beamstream.service.principal import Caller
from beamstream.service.problems import NotFound
from beamstream.service.store import JobStore, StreamNotFound
from beamstream.service.relay_worker import BufferLink
from beamstream.wire.control import Error, Hello, pack, proof_refusal, proven_hello, unpack
from beamstream.wire.relay import join_frames, split_frames

MAX_CLIENT_MESSAGE = 64 << 10  # a reader sends only control messages (hello, ack)
WAIT_FOR_RUNNING_S = 120.0
CHECK_EVERY_S = 0.1  # while waiting for a stream to run
WATCH_EVERY_S = 1.0  # while relaying: is the stream still running?
SILENT_AFTER_END_S = 2.0  # a buffer that says nothing for this long after its stream ended has stopped
PENDING = 16  # reader's messages held while the stream is not yet running
MAX_RELAYS = 256  # readers relayed at once (each holds a connection, a thread, its DEALER and a few messages)
MAX_REASON_BYTES = 123  # what a WebSocket close frame can carry


class RelayClosed(Exception):
    """Close the WebSocket with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


router = APIRouter()


@router.websocket("/v1/streams/{stream_id}/relay", name="relay")
async def relay(websocket: WebSocket, stream_id: str, principal: Caller, context: Context) -> None:
    """Pipe a reader's WebSocket to the stream's buffer until either side goes away, if ``principal`` may see
    the stream (closed as for an unknown stream if not), through the ZeroMQ context the application's lifespan
    keeps (``context.relay_context``)."""
    await websocket.accept()
    try:
        await asyncio.to_thread(access.stream, context, principal, stream_id, Action.RELAY)
    except NotFound:
        closed = _unknown(stream_id)
        await _close(websocket, closed.code, closed.reason)
        return
    if context.relays >= MAX_RELAYS:
        await _close(websocket, 1013, f"this service relays {MAX_RELAYS} readers already; try again later")
        return
    context.relays += 1
    try:
        await _pipe(websocket, context.store, stream_id, context.relay_context)
    finally:
        context.relays -= 1
        if not context.relays:
            trim_freed_buffers()


async def _pipe(websocket: WebSocket, store: JobStore, stream_id: str, context: zmq.asyncio.Context) -> None:
    """Wait for the stream to run, then pipe both ways until either side goes away or the stream has ended."""
    inbox: asyncio.Queue[list[memoryview]] = asyncio.Queue(PENDING)
    heard = [time.monotonic()]  # when the buffer last said something
    connected = asyncio.Event()
    tasks = {asyncio.create_task(_from_reader(websocket, inbox, connected))}
    link = None
    try:
        waiting = asyncio.create_task(_consumer_endpoint(store, stream_id))
        tasks.add(waiting)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            _outcome(tasks)  # the reader left, or broke the framing, while the stream was waited for
            return
        tasks.discard(waiting)
        endpoint, admission = waiting.result()
        link = _connect(context, endpoint, heard)
        connected.set()
        tasks |= {asyncio.create_task(_to_buffer(link, inbox, admission, websocket)),
                  asyncio.create_task(_to_reader(link, websocket)),
                  asyncio.create_task(_watch(store, stream_id, heard))}
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        _outcome(done)
    except RelayClosed as closed:
        await _close(websocket, closed.code, closed.reason)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if link is not None:
            await link.close()


def _outcome(tasks: set[asyncio.Task]) -> None:
    """Raise what ended any finished task of ``tasks`` (RelayClosed), if anything did."""
    for task in tasks:
        if task.done():
            task.result()


async def _consumer_endpoint(store: JobStore, stream_id: str) -> tuple[str, AdmissionKey | None]:
    """The buffer's consumer endpoint once the stream runs, and the stream's admission key (None: the stream has
    no credentials, or the relay does not prove hellos); RelayClosed if it is unknown, ended or late."""
    deadline = time.monotonic() + WAIT_FOR_RUNNING_S
    while True:
        try:
            record = await asyncio.to_thread(store.get, stream_id)
        except StreamNotFound:
            raise _unknown(stream_id) from None
        if record.state.final:
            raise RelayClosed(4410, f"stream {record.id} has ended ({record.state.value})")
        if record.state is State.RUNNING and record.endpoints:
            admission = None
            if record.key is not None:
                admission = StreamKey.from_text(record.key).admission
            return record.endpoints["consumers"], admission
        if time.monotonic() > deadline:
            raise RelayClosed(1013, f"stream {record.id} did not start running within {WAIT_FOR_RUNNING_S:g} s "
                                    f"(it is {record.state.value})")
        await asyncio.sleep(CHECK_EVERY_S)


def _unknown(stream_id: str) -> RelayClosed:
    return RelayClosed(4404, f"no stream {stream_id!r} on this service")


def _connect(context: zmq.asyncio.Context, endpoint: str, heard: list[float]) -> BufferLink:
    try:
        return BufferLink(context, endpoint, heard)
    except TransportError as exc:
        raise RelayClosed(1011, f"cannot reach the stream's buffer: {exc}") from None


async def _from_reader(websocket: WebSocket, inbox: asyncio.Queue, connected: asyncio.Event) -> None:
    """Put each of the reader's messages, split into frames, in ``inbox`` (the oldest dropped from a full one
    until ``connected``); return when the reader has gone."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is None:
            raise RelayClosed(1003, "the relay takes binary messages only (docs/relay.md)")
        try:
            frames = split_frames(message["bytes"])
        except WireFormatError as exc:
            raise RelayClosed(1007, str(exc)) from None
        if inbox.full() and not connected.is_set():
            inbox.get_nowait()
        await inbox.put(frames)


async def _to_buffer(link: BufferLink, inbox: asyncio.Queue, admission: AdmissionKey | None,
                     websocket: WebSocket) -> None:
    """Forward the reader's messages to the buffer, its hellos vouched for; a hello whose own proof is wrong is
    answered, as the buffer answers it on the direct path, with an ``error`` (the reader then stops at once)."""
    while True:
        frames = vouched(await inbox.get(), admission)
        if isinstance(frames, Error):
            await websocket.send_bytes(join_frames([pack(frames)]))
        else:
            await link.send(frames)


def vouched(frames: list, admission: AdmissionKey | None) -> list | Error:
    """A reader's message as the relay forwards it to the buffer: a hello made again with the relay's own fresh
    proof under ``admission`` (same group, lossy, start and credit; a new nonce and time, so that the reader's
    hello, sent again each second, is never a replay); anything else (and everything without ``admission``)
    unchanged. A hello that carries a proof of its own (its reader holds a key) must prove the stream's
    admission key: if not, the ``error`` the buffer would answer it with, instead. A hello without a proof
    (a reader without the key: an admin) is vouched for, and gets sealed payloads it cannot open."""
    if admission is None or len(frames) != 1:
        return frames
    try:
        hello = unpack(frames[0], Hello)
    except WireFormatError:
        return frames  # an ack, or a message the buffer will refuse in its own words
    if hello.proof and (refused := proof_refusal(admission, hello)) is not None:
        return Error(reason=refused[1])
    return [pack(proven_hello(admission, group=hello.group, lossy=hello.lossy, start=hello.start,
                              credit=hello.credit))]


async def _to_reader(link: BufferLink, websocket: WebSocket) -> None:
    """Send each of the buffer's messages but its pings to the reader; return when the reader has gone (or the
    link's thread has ended: the service is stopping)."""
    while (message := await link.receive()) is not None:
        try:
            await websocket.send_bytes(message)
        except WebSocketDisconnect:
            return
        link.sent()


async def _watch(store: JobStore, stream_id: str, heard: list[float]) -> None:
    """RelayClosed once the stream has ended and its buffer has been silent for :data:`SILENT_AFTER_END_S`."""
    while True:
        await asyncio.sleep(WATCH_EVERY_S)
        record = await asyncio.to_thread(store.get, stream_id)
        if record.state.final and time.monotonic() - heard[0] > SILENT_AFTER_END_S:
            raise RelayClosed(4410, f"stream {record.id} has ended ({record.state.value})")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close the WebSocket with ``code`` and ``reason`` unless it is closed already."""
    if websocket.application_state is WebSocketState.CONNECTED and websocket.client_state is WebSocketState.CONNECTED:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code, reason)
