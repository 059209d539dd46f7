"""Reading messages held in memory: for tests of everything a Client does once frames have arrived."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from beamstream.client.transports.base import Delivery, StreamEnd, Transport
from beamstream.wire.control import Verdict


class MemoryTransport(Transport):
    """Hands over ``messages`` (each a list of frames, as ``to_frames()`` gives) in order.

    With ``verdict`` the stream then ends with it, as a buffer would end it; without one it
    ends when every producer's end message has been read, as a direct stream does. Past the
    last message the transport is silent. ``receipts``, ``refusals`` and ``done`` record what
    the Client said: the parsed messages it took, the reasons it refused others, and the
    positions in ``messages`` it finished.
    """

    def __init__(self, messages: Iterable[list[Any]], verdict: Verdict | None = None) -> None:
        self.messages = [list(frames) for frames in messages]
        self.verdict = verdict
        self.ends_with_verdict = verdict is not None
        self.where = "memory"
        self.receipts: list[Any] = []
        self.refusals: list[str] = []
        self.done: list[int] = []
        self.closed = False

    def deliveries(self, timeout: float | None) -> Iterator[Delivery | StreamEnd | None]:
        for position, frames in enumerate(self.messages):
            yield Delivery(frames, receipt=self.receipts.append, refuse=self.refusals.append,
                           done=lambda position=position: self.done.append(position))
        if self.verdict is not None:
            yield StreamEnd(self.verdict)
        while True:
            yield None

    def close(self) -> None:
        self.closed = True
