"""``stream``: deliver messages over ZeroMQ, load-balanced (PUSH) or broadcast (PUB).

Broadcast uses an XPUB socket with ZMQ_XPUB_NODROP, so a slow subscriber slows the producer
instead of losing messages silently; ``subscribers`` makes the producer wait until that many
subscribers are connected before the first message (no slow-joiner losses).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import zmq
from pydantic import Field, field_validator

from beamstream.errors import StreamTimeout, TransportError
from beamstream.stages import SinkContext, SinkSpec
from beamstream.transport import check_endpoint, open_socket, rank_endpoint


class StreamSink(SinkSpec):
    """Send messages to consumers over ZeroMQ.

    Attributes:
        endpoint: tcp://HOST:PORT or ipc://PATH.
        bind: False (default): every producer connects to a consumer or buffer that binds.
            True: each producer binds; producer r binds PORT+r (ipc: PATH-r).
        pattern: push (default; each message to one consumer) or pub (every subscriber gets every message).
        hwm: messages queued per consumer before a send waits. Default 4.
        send_timeout_s: how long a send may wait for a consumer before the producer fails. Default 300.
        subscribers: pub only: wait for this many subscribers before sending. Default 0 (don't wait).
    """

    type: Literal["stream"] = "stream"
    endpoint: str
    bind: bool = False
    pattern: Literal["push", "pub"] = "push"
    hwm: int = Field(4, ge=1)
    send_timeout_s: float | None = Field(300.0, gt=0)
    subscribers: int = Field(0, ge=0)

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, endpoint: str) -> str:
        try:
            return check_endpoint(endpoint)
        except TransportError as exc:
            raise ValueError(str(exc)) from None

    def open(self, context: SinkContext) -> StreamSender:
        endpoint = rank_endpoint(self.endpoint, context.rank) if self.bind else self.endpoint
        return StreamSender(self, endpoint)


class StreamSender:
    """One producer's socket; ``send`` blocks while consumers are behind (up to the timeout)."""

    def __init__(self, spec: StreamSink, endpoint: str) -> None:
        self.spec = spec
        self.endpoint = endpoint
        self.context = zmq.Context()
        kind = zmq.PUSH if spec.pattern == "push" else zmq.XPUB
        self.socket = open_socket(self.context, kind, endpoint, bind=spec.bind, hwm=spec.hwm)
        if spec.send_timeout_s is not None:
            self.socket.setsockopt(zmq.SNDTIMEO, int(spec.send_timeout_s * 1000))
        if spec.pattern == "pub":
            self.socket.setsockopt(zmq.XPUB_NODROP, 1)
            self._wait_for_subscribers(spec.subscribers)

    def _wait_for_subscribers(self, count: int) -> None:
        deadline = None if self.spec.send_timeout_s is None else time.monotonic() + self.spec.send_timeout_s
        seen = 0
        while seen < count:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0 or not self.socket.poll(None if remaining is None else int(remaining * 1000)):
                self.close_now()
                raise StreamTimeout(f"{self.endpoint}: {seen} of {count} subscribers connected within {self.spec.send_timeout_s} s")
            if self.socket.recv()[:1] == b"\x01":
                seen += 1

    def _send(self, frames: list[Any]) -> None:
        try:
            self.socket.send_multipart(frames, copy=False)
        except zmq.Again:
            raise StreamTimeout(
                f"no consumer took a message from {self.endpoint} within {self.spec.send_timeout_s} s: "
                "start a consumer (beamstream consume) or raise send_timeout_s"
            ) from None
        except zmq.ZMQError as exc:
            raise TransportError(f"{self.endpoint}: send failed: {exc.strerror}") from None

    def send(self, message: Any) -> None:
        self._send(message.to_frames())

    def close(self, end: Any) -> None:
        """Send ``end``, then wait (up to the send timeout) for queued messages to leave."""
        try:
            self._send(end.to_frames())
        finally:
            linger = -1 if self.spec.send_timeout_s is None else int(self.spec.send_timeout_s * 1000)
            self.socket.close(linger=linger)
            self.context.term()

    def close_now(self) -> None:
        """Drop anything queued and release the socket."""
        self.socket.close(linger=0)
        self.context.term()
