"""The relay's buffer side on a thread per reader (:class:`BufferLink`): the service's event loop only sends.

Each relayed reader (:mod:`beamstream.service.relay`) gets one thread, which owns the DEALER
connected to the stream's buffer. It receives the buffer's messages with blocking ZeroMQ calls,
drops its pings and joins each message's frames into one relay message
(:func:`~beamstream.wire.relay.join_frames`, the copy of the whole message) while the event loop
is sending the previous one; the loop then only hands the message to the WebSocket. The
reader's messages travel the other way over an ``inproc://`` pair, without a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Sequence

import zmq
import zmq.asyncio

from beamstream.transport import open_socket
from beamstream.wire.control import Ping, pack
from beamstream.wire.relay import join_frames

QUEUED = 4  # messages the DEALER queues each way, and relay messages joined ahead of the WebSocket
STOP_CHECK_S = 1.0  # how often a waiting thread also checks for a stop (a lost stop message, the service stopping)
PING = pack(Ping())
FORWARD, STOP = b"f", b"s"  # what the loop's messages to the thread say: forward the frames after it, or stop


class BufferLink:
    """A DEALER connected to the buffer's consumer ``endpoint``, served by a thread of its own; made on the loop.

    :meth:`receive` gives the buffer's messages as relay messages, pings left out, in order;
    each must be followed by :meth:`sent` once it has gone to the WebSocket, so at most
    :data:`QUEUED` wait joined in the service. :meth:`send` forwards a reader's message (its
    frames) to the buffer. ``heard[0]`` is set to :func:`time.monotonic` whenever the buffer
    says anything, pings included. :meth:`close` stops the thread and closes the DEALER at
    once; the thread also ends, closing it, when ``context`` is terminated (the service
    stopping), and :meth:`receive` then returns None.

    Raises TransportError if the DEALER cannot connect to ``endpoint``.
    """

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, heard: list[float]) -> None:
        self._loop = asyncio.get_running_loop()
        threads = zmq.Context.shadow(context.underlying)  # blocking sockets of the same context: inproc reaches
        self._dealer = open_socket(threads, zmq.DEALER, endpoint, bind=False, hwm=QUEUED)
        address = f"inproc://beamstream-relay-{uuid.uuid4().hex}"
        self._inbox = context.socket(zmq.PAIR)  # the loop's end
        self._inbox.bind(address)
        self._pair = threads.socket(zmq.PAIR)  # the thread's end
        self._pair.connect(address)
        self._heard = heard
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._slots = threading.Semaphore(QUEUED)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="beamstream-relay", daemon=True)
        self._thread.start()

    async def send(self, frames: Sequence[memoryview | bytes]) -> None:
        """Forward a reader's message to the buffer (waits while the thread's queue to it is full)."""
        await self._inbox.send_multipart([FORWARD, *frames], copy=False)

    async def receive(self) -> bytes | None:
        """The buffer's next message as a relay message; None once the thread has ended."""
        return await self._outbox.get()

    def sent(self) -> None:
        """The message :meth:`receive` gave has gone to the WebSocket: the thread may join one more."""
        self._slots.release()

    async def close(self) -> None:
        """Stop the thread and wait until it has closed the DEALER."""
        self._stopping.set()
        self._slots.release()  # a thread waiting for a slot wakes and sees the stop
        try:
            with contextlib.suppress(zmq.ZMQError):
                self._inbox.send(STOP, zmq.NOBLOCK)
            await asyncio.to_thread(self._thread.join)
        finally:
            self._inbox.close(linger=0)

    def _serve(self) -> None:
        """The thread: forward both ways until stopped or the context is terminated; then close both sockets."""
        poller = zmq.Poller()
        waiting: list | None = None  # a reader's message the DEALER could not take yet (its queue is full)
        try:
            while not self._stopping.is_set():
                poller.register(self._dealer, zmq.POLLIN | (zmq.POLLOUT if waiting is not None else 0))
                poller.register(self._pair, zmq.POLLIN if waiting is None else 0)
                ready = dict(poller.poll(STOP_CHECK_S * 1000))
                if ready.get(self._pair, 0) & zmq.POLLIN:
                    kind, *waiting = self._pair.recv_multipart(copy=False)
                    if kind.bytes == STOP:
                        return
                if waiting is not None:
                    try:
                        self._dealer.send_multipart(waiting, flags=zmq.NOBLOCK, copy=False)
                        waiting = None
                    except zmq.Again:
                        pass
                if ready.get(self._dealer, 0) & zmq.POLLIN and not self._to_loop(
                        self._dealer.recv_multipart(copy=False)):
                    return
        except zmq.ContextTerminated:
            return
        finally:
            self._dealer.close(linger=0)
            self._pair.close(linger=0)
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self._loop.call_soon_threadsafe(self._outbox.put_nowait, None)

    def _to_loop(self, frames: list[zmq.Frame]) -> bool:
        """Hand the buffer's message ``frames`` to the loop as a relay message (not a ping); False if stopped
        while waiting for a slot."""
        self._heard[0] = time.monotonic()
        if len(frames) == 1 and frames[0].bytes == PING:
            return True
        message = join_frames(frames)
        while not self._slots.acquire(timeout=STOP_CHECK_S):
            self._pair.poll(0)  # raises ContextTerminated once the service stops (its context waits for this thread)
        if self._stopping.is_set():
            return False
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, message)
        return True
