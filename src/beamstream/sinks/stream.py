"""``stream``: deliver messages over ZeroMQ, load-balanced (push) or broadcast (pub).

push uses a DEALER socket (each message to one consumer, like PUSH, blocking at the HWM);
pub an XPUB socket with ZMQ_XPUB_NODROP, so a slow subscriber slows the producer instead of
losing messages silently; ``subscribers`` makes the producer wait for that many subscribers
before the first message (no slow-joiner losses).

A producer closes only after its end-of-stream message is acknowledged (``beamstream-ack``, :mod:`beamstream.wire.replies`) by the
consumer (push) or by every subscriber (pub): ZeroMQ's linger alone can drop the last
messages of a closing socket (libzmq issues 1922, 3774, 4660), and that loss would be silent.

push also keeps every message until its receiver (a buffer or a client) says it has it
(:func:`~beamstream.wire.replies.kept`), at most ``2 × hwm + 2`` of them (a send waits while
that many are unacknowledged). When the connection drops and comes back (a buffer killed and
restarted), the producer sends them all again, in order; receivers drop what they already had
by (rank, message index). So a message in flight to a buffer that died is not lost. With
several consumers connected at once a producer cannot tell which one had a message, so it
resends only when the connection that came back is its only one.

Over an ``shm://PATH`` endpoint (push only) the producer writes each payload into its own shared-memory arena
(:mod:`beamstream.shared_memory`, ``shm_bytes`` of /dev/shm) and sends the header with a reference to the slot
(:mod:`beamstream.wire.slots`); the receiver maps the arena read-only and tells the producer when it has released
the slot, which the producer then reuses. A send waits while the arena has no room. Over shared memory a receiver
says in each ``kept`` which session of it holds the slot; a producer connects to one receiver, so when another
session answers, the one before is gone (killed, restarted) and the slots it held are the producer's again
(``bind: true`` is refused: several readers could share a producer). Messages not yet kept are sent again as
over ipc://, from their slots.

A push producer whose receivers have all disconnected (a buffer stopped or killed, a consumer gone) says so at
once and waits ``reconnect_s`` (default 30 s) for one to come back; then, with messages still unacknowledged, it
fails with StreamTimeout naming the endpoint, how long ago it lost it and what to do, instead of waiting out
``send_timeout_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from zmq.utils.monitor import recv_monitor_message

import zmq
from pydantic import Field, field_validator, model_validator

from beamstream.errors import StreamTimeout, TransportError, WireFormatError
from beamstream.shared_memory import DEFAULT_ARENA_BYTES, Arena, ArenaFull
from beamstream.stages import SinkContext, SinkSpec
from beamstream.transport import open_socket, rank_endpoint, shared, spec_endpoint
from beamstream.wire.replies import parse_reply
from beamstream.wire.slots import encode_ref

logger = logging.getLogger(__name__)
NOTICE_AFTER_S = 2.0  # a producer waiting this long for a consumer says so


class StreamSink(SinkSpec):
    """Send messages to consumers over ZeroMQ.

    Attributes:
        endpoint: tcp://HOST:PORT, ipc://PATH or shm://PATH (ipc:// with payloads in shared memory: receivers on
            this node only, push only); or a list of them (push producers that connect): the producers
            are spread over them round-robin by rank, rank r sending to endpoint ``r % len(list)``, and each
            receiver accounts for its producers alone (the stream's ``receivers``, docs/wire-format.md). Each
            receiver, a consumer or a buffer, then has a verdict on its part; none more endpoints than producers.
        bind: False (default): every producer connects to a consumer or buffer that binds.
            True: each producer binds; producer r binds PORT+r (ipc: PATH-r).
        pattern: push (default; each message to one consumer) or pub (every subscriber gets every message).
        hwm: messages queued per consumer before a send waits. Default 4.
        send_timeout_s: how long a send may wait for a consumer before the producer fails. Default 300.
        reconnect_s: push only: once every buffer or consumer it was connected to has disconnected, how long the
            producer waits for one to come back (a buffer restarted on its spill) before it fails, saying so.
            Default 30; null: as long as ``send_timeout_s``.
        subscribers: pub only: wait for this many subscribers before sending. Default 0 (don't wait).
        shm_bytes: shm:// only: bytes of shared memory each producer writes its payloads into (default 256 MiB);
            a send waits while receivers hold all of it, and a message larger than it is refused.
    """

    type: Literal["stream"] = "stream"
    endpoint: str | list[str]
    bind: bool = False
    pattern: Literal["push", "pub"] = "push"
    hwm: int = Field(4, ge=1)
    send_timeout_s: float | None = Field(300.0, gt=0)
    reconnect_s: float | None = Field(30.0, gt=0)
    subscribers: int = Field(0, ge=0)
    shm_bytes: int = Field(DEFAULT_ARENA_BYTES, ge=1 << 20)

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, endpoint: str | list[str]) -> str | list[str]:
        if isinstance(endpoint, str):
            return spec_endpoint(endpoint)
        endpoints = [spec_endpoint(each) for each in endpoint]
        if not endpoints:
            raise ValueError("endpoint: give an endpoint, or a list of endpoints to spread the producers over")
        if len(set(endpoints)) < len(endpoints):
            raise ValueError(f"endpoint: the list names an endpoint twice: {', '.join(endpoints)}")
        return endpoints

    @model_validator(mode="after")
    def _spread_pushes_only(self) -> StreamSink:
        if self.receivers > 1 and (self.bind or self.pattern != "push"):
            raise ValueError("a list of endpoints spreads push producers that connect (bind: false, pattern: push); "
                             "with bind: true each producer binds its own endpoint already, and pub sends every "
                             "message to every subscriber")
        return self

    @model_validator(mode="after")
    def _shared_memory_pushes(self) -> StreamSink:
        endpoints = [self.endpoint] if isinstance(self.endpoint, str) else self.endpoint
        if any(shared(each) for each in endpoints) and (self.pattern == "pub" or self.bind):
            raise ValueError("shm:// endpoints carry push streams to a receiver that binds (pattern: push, bind: "
                             "false): each producer's slots are held by the one receiver it connects to; publish or "
                             "bind over ipc:// instead")
        return self

    @property
    def receivers(self) -> int:
        """How many receivers the producers are spread over: the endpoints listed (1 for one endpoint)."""
        return 1 if isinstance(self.endpoint, str) else len(self.endpoint)

    def open(self, context: SinkContext) -> StreamSender:
        if isinstance(self.endpoint, list):
            return StreamSender(self, self.endpoint[context.rank % self.receivers], key=context.key)
        endpoint = rank_endpoint(self.endpoint, context.rank) if self.bind else self.endpoint
        return StreamSender(self, endpoint, key=context.key)


class StreamSender:
    """One producer's socket; ``send`` blocks while consumers are behind (up to the timeout). With ``key`` (a
    :class:`~beamstream.security.streamkey.StreamKey`) every message is sealed (docs/wire-format.md)."""

    def __init__(self, spec: StreamSink, endpoint: str, key: Any = None) -> None:
        self.spec = spec
        self.endpoint = endpoint
        self.key = key
        self.arena = Arena(spec.shm_bytes) if shared(endpoint) else None
        self.slots: dict[int, int] = {}  # shm: generation → message index of every slot held
        self.slot_of: dict[int, int] = {}  # shm: message index → its slot's generation, until kept
        self.holders: dict[int, str] = {}  # shm: generation → the receiver session that kept it
        self.resent: set[int] = set()  # shm: slots sent again on a connection that came back, not yet kept there
        self.session: str | None = None  # shm: the receiver's session that kept a message last
        self.gone_sessions: set[str] = set()
        self.context = zmq.Context()
        kind = zmq.DEALER if spec.pattern == "push" else zmq.XPUB
        try:
            self.socket = open_socket(self.context, kind, endpoint, bind=spec.bind, hwm=spec.hwm, replies="in")
        except TransportError:
            if self.arena is not None:
                self.arena.close()
            raise
        if spec.send_timeout_s is not None:
            self.socket.setsockopt(zmq.SNDTIMEO, int(spec.send_timeout_s * 1000))
        if self.arena is not None:  # queue only on live connections: nothing queued for a receiver that died is
            self.socket.setsockopt(zmq.IMMEDIATE, 1)  # sent later to the next one as well as resent (a duplicate)
        self.subscribers = 0
        self.acks = 0
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.write_poller = zmq.Poller()  # the same, and the socket's room for a message
        self.write_poller.register(self.socket, zmq.POLLIN | zmq.POLLOUT)
        self.unacked: dict[int | str, list[Any]] = {}  # push: message index (or "end") → frames, until kept
        self.window = 2 * spec.hwm + 2
        self.peers = 0
        self.lost_peer = False
        self.resends = 0  # how many times every unacknowledged message was sent again (a connection came back)
        self.gone_since: float | None = None  # when the last connection dropped (monotonic), until one is back
        self.may_say_waiting = True  # until a consumer replies, or the producer said it waits for one
        self.monitor: zmq.Socket | None = None
        if spec.pattern == "push":
            self.monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            self.poller.register(self.monitor, zmq.POLLIN)
            self.write_poller.register(self.monitor, zmq.POLLIN)
        if spec.pattern == "pub":
            self.socket.setsockopt(zmq.XPUB_NODROP, 1)
            self.socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, not only the first
            try:
                self._wait_until(lambda: self.subscribers >= spec.subscribers, f"{spec.subscribers} subscribers")
            except StreamTimeout:
                self.close_now()
                raise

    def _handle_incoming(self, wait_ms: int | None, writable: bool = False) -> None:
        """Handle what comes within ``wait_ms`` (or until the socket has room for a message, if ``writable``):
        connection events, and one upstream message (a (un)subscription, a kept data message or an end
        acknowledgement)."""
        ready = dict((self.write_poller if writable else self.poller).poll(wait_ms))
        if self.monitor is not None and self.monitor in ready:
            self._on_connection_event(recv_monitor_message(self.monitor)["event"])
        if not ready.get(self.socket, 0) & zmq.POLLIN:
            return
        try:
            reply = parse_reply(self.socket.recv())
        except WireFormatError as exc:
            logger.warning("%s: ignored a reply: %s", self.endpoint, exc)
            return
        if reply.kind in ("kept", "ack"):
            self.may_say_waiting = False
            self.gone_since = None  # a receiver answers: one is there, whatever the connection events said
        if reply.kind == "kept":
            self.unacked.pop(reply.index, None)
            if self.arena is not None and reply.session:
                self._on_kept(self.slot_of.get(reply.index), reply.session)
        elif reply.kind == "released":
            if self.arena is not None and reply.index not in self.resent:  # resent: the next session's to release
                self._take_back(reply.index)
        elif reply.kind == "ack":
            self.acks += 1
            self.unacked.pop("end", None)
        elif reply.kind == "refused":
            raise TransportError(f"{self.endpoint} refused a message: {reply.reason}")
        elif self.spec.pattern == "pub":
            self.subscribers += 1 if reply.kind == "subscribe" else -1

    def _on_connection_event(self, event: int) -> None:
        """Count connections; when the only one comes back after a loss, send every unacknowledged message again."""
        if event == zmq.EVENT_DISCONNECTED:
            had_peers = self.peers > 0
            self.peers = max(self.peers - 1, 0)  # a connection that failed its handshake was never counted
            self.lost_peer = True
            if had_peers and self.peers == 0 and self.gone_since is None:
                self.gone_since = time.monotonic()
                reconnect_s = self._reconnect_s()
                logger.warning("%s disconnected (stopped?); waiting %s for it to come back", self._receivers(),
                               "without a limit" if reconnect_s is None else f"up to {reconnect_s:g} s")
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.peers += 1
            self.gone_since = None
            if self.lost_peer and self.peers == 1:
                self.lost_peer = False
                self.resends += 1
                for index in self.unacked:
                    if index in self.slot_of:
                        self.resent.add(self.slot_of[index])
                        self.holders.pop(self.slot_of[index], None)
                for frames in list(self.unacked.values()):
                    self._send(frames, resend=True)

    def _on_kept(self, generation: int | None, session: str) -> None:
        """Shared memory: the receiver ``session`` holds slot ``generation`` until it releases it.

        A push producer talks to one receiver at a time, so a new session means the ones before are gone
        (killed, restarted): the slots they held are the producer's again. A slot sent again on a connection
        that came back is the next session's: a late ``kept`` of the one before does not make it theirs."""
        if generation is None:
            return
        if session != self.session and session not in self.gone_sessions:
            if self.session is not None:
                self.gone_sessions.add(self.session)
            self.session = session
            for held, holder in list(self.holders.items()):
                if holder != session:
                    self._take_back(held)
        if session == self.session:
            self.holders[generation] = session
            self.resent.discard(generation)
        elif generation not in self.resent:
            self._take_back(generation)  # a gone receiver said late that it had kept it

    def _take_back(self, generation: int) -> None:
        """Slot ``generation`` is free (released, or its holder is gone)."""
        if self.arena.release(generation):
            self.holders.pop(generation, None)
            self.resent.discard(generation)
            self.slot_of.pop(self.slots.pop(generation), None)

    def _wait_until(self, done: Callable[[], bool], what: str, *, failure: Callable[[], str] | None = None,
                    writable: bool = False) -> None:
        """Handle incoming messages until ``done()`` (waking up when the socket has room, if ``writable``);
        StreamTimeout (``failure()``, or saying ``what``) after the send timeout, or once the receivers have been
        gone for ``reconnect_s`` (:meth:`_give_up_if_gone`)."""
        timeout = self.spec.send_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            self._give_up_if_gone(now)
            if deadline is not None and deadline <= now:
                raise StreamTimeout(failure() if failure else f"{self.endpoint}: waited {timeout} s for {what}")
            ends = [end for end in (deadline, self._given_up_at()) if end is not None]
            self._handle_incoming(max(1, int((min(ends) - now) * 1000)) if ends else None, writable)

    def _reconnect_s(self) -> float | None:
        """How long receivers that are all gone may take to come back: ``reconnect_s`` (or ``send_timeout_s``)."""
        return self.spec.send_timeout_s if self.spec.reconnect_s is None else self.spec.reconnect_s

    def _given_up_at(self) -> float | None:
        """When (monotonic) the producer gives up on receivers that are all gone; None while one is connected."""
        reconnect_s = self._reconnect_s()
        return None if self.gone_since is None or reconnect_s is None else self.gone_since + reconnect_s

    def _give_up_if_gone(self, now: float) -> None:
        """StreamTimeout, saying what happened and what to do, once every receiver has been gone for
        ``reconnect_s`` while messages are unacknowledged (the stream cannot end complete without one)."""
        given_up_at = self._given_up_at()
        if given_up_at is None or now < given_up_at or not self.unacked:
            return
        raise StreamTimeout(
            f"{self._receivers()} stopped taking messages: it disconnected {now - self.gone_since:.0f} s ago and is "
            f"not back ({len(self.unacked)} message(s) unacknowledged); restart it and run the producer again (one "
            f"restarted within the stream sink's reconnect_s, {self._reconnect_s():g} s, lets the stream go on)")

    def _receivers(self) -> str:
        return f"the consumers of {self.endpoint}" if self.spec.bind else f"the buffer or consumer at {self.endpoint}"

    def _nobody_takes(self) -> str:
        gone = "" if self.gone_since is None else \
            f" ({self._receivers()} disconnected {time.monotonic() - self.gone_since:.0f} s ago)"
        return (f"no consumer took a message from {self.endpoint} within {self.spec.send_timeout_s} s{gone}: "
                "start a consumer (beamstream consume) or raise send_timeout_s")

    def _writable(self) -> bool:
        return bool(self.socket.getsockopt(zmq.EVENTS) & zmq.POLLOUT)

    def _send(self, frames: list[Any], *, resend: bool = False, key: int | str | None = None) -> None:
        """Send ``frames``. push: wait (handling replies and connection events) until the socket has room, so that
        receivers gone are noticed; a ``resend``, on a connection just back, waits on the socket alone. A message
        (``key``: its index in :attr:`unacked`) that went out with every unacknowledged one while this send waited
        is not sent twice (over shared memory, its slot has changed since)."""
        if self.monitor is not None and not resend:
            resends = self.resends
            if self.may_say_waiting and not self.socket.poll(int(NOTICE_AFTER_S * 1000), zmq.POLLOUT):
                self.may_say_waiting = False
                logger.warning("waiting for a consumer at %s (nothing has taken a message yet: start `beamstream "
                               "consume` or a buffer there)", self.endpoint)
            self._wait_until(self._writable, "room to send", failure=self._nobody_takes, writable=True)
            if self.resends != resends and key in self.unacked:
                return
        try:
            self.socket.send_multipart(frames, copy=False)
        except zmq.Again:
            raise StreamTimeout(self._nobody_takes()) from None
        except zmq.ZMQError as exc:
            raise TransportError(f"{self.endpoint}: send failed: {exc.strerror}") from None

    def send(self, message: Any) -> None:
        while self.poller.poll(0):
            self._handle_incoming(0)
        self._give_up_if_gone(time.monotonic())
        frames = message.to_frames(self.key)
        if self.monitor is not None:
            self._wait_until(lambda: len(self.unacked) < self.window, "acknowledgements", failure=self._nobody_takes)
            if self.arena is not None:
                frames = self._in_arena(frames, message.index)
            self.unacked[message.index] = frames
        self._send(frames, key=message.index)

    def _in_arena(self, frames: list[Any], index: int) -> list[Any]:
        """``[header, ref]``: the message with every frame after its header written into a slot of the arena,
        once readers have released enough of it (StreamTimeout after ``send_timeout_s``)."""
        placed: list[Any] = []

        def put() -> bool:
            try:
                placed.append(self.arena.put(frames[1:]))
            except ArenaFull:
                return False
            return True

        self._wait_until(put, "readers to release shared memory", failure=lambda: (
            f"the readers of {self.endpoint} kept all {self.spec.shm_bytes} bytes of this producer's shared memory "
            f"for {self.spec.send_timeout_s} s ({self.arena.held()} messages): a reader holds messages without "
            "moving on, or shm_bytes is too small for the messages in flight"))
        self.slots[placed[0].generation] = index
        self.slot_of[index] = placed[0].generation
        return [frames[0], encode_ref(placed[0])]

    def close(self, end: Any) -> None:
        """Send ``end`` and wait until it is acknowledged (StreamTimeout after ``send_timeout_s``)."""
        try:
            frames = end.to_frames(self.key)
            if self.monitor is not None:
                self.unacked["end"] = frames
            self._send(frames, key="end")
            expected = 1 if self.spec.pattern == "push" else max(1, self.subscribers)
            self._wait_until(lambda: self.acks >= expected, "the consumer to acknowledge the end of the stream")
        finally:
            self.close_now()

    def close_now(self) -> None:
        """Drop anything queued and release the socket."""
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
        self.socket.close(linger=0)
        self.context.term()
        if self.arena is not None:
            self.arena.close()
