"""Reading producers on this node through shared memory: an ``shm://PATH`` endpoint (:mod:`beamstream.wire.slots`).

The socket is a direct reader's (a ROUTER on the ipc:// socket ``PATH``); each data message's payload frames are
read-only views of the slot its producer wrote in its arena, mapped here without a copy. The slot is released to
its producer when the application asks for the next message (``copy=True``: at once, the frames copied first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import zmq

from beamstream.client.transports.base import DEFAULT_HWM, Delivery, Options
from beamstream.client.transports.direct import DirectTransport
from beamstream.errors import WireFormatError
from beamstream.shared_memory import ArenaMaps, read_slot
from beamstream.transport import DEFAULT_MAX_MESSAGE
from beamstream.wire import DataHeader, EndMessage, parse_header
from beamstream.wire.replies import new_session, released

if TYPE_CHECKING:
    from beamstream.security.streamkey import StreamKey


class SharedMemoryTransport(DirectTransport):
    """Push producers' messages from ``endpoints`` (``shm://PATH``), bound or connected, their payloads in the
    producers' shared memory; ``copy``: copy each payload out and release its slot at once."""

    takes = frozenset({"endpoints", "bind", "hwm", "max_message", "copy"})
    scope = "to streams read from producers directly"
    scopes = {"copy": "to shm:// streams"}

    def __init__(self, endpoints: Sequence[str], *, bind: bool = False, hwm: int = DEFAULT_HWM,
                 max_message: int = DEFAULT_MAX_MESSAGE, copy: bool = False) -> None:
        super().__init__(endpoints, bind=bind, hwm=hwm, max_message=max_message)
        self.session = new_session()
        self.copy = copy
        self.maps = ArenaMaps()
        self.delivered: set[tuple[str, int, int]] = set()  # (stream, rank, index) of every data message mapped

    @classmethod
    def from_options(cls, endpoints: list[str], options: Options, key: StreamKey | None) -> SharedMemoryTransport:
        return cls(endpoints, **options)

    def _delivery(self, routing: list[zmq.Frame], frames: list[zmq.Frame]) -> Delivery | None:
        """The delivery with the slot's frames in place of its reference (an end message as it came); None for
        a message delivered before whose slot its producer has reused since (the producer's copy is gone)."""
        delivery = super()._delivery(routing, frames)
        try:
            delivery.frames, ref = read_slot(self.maps, frames, copy=self.copy)
        except WireFormatError as exc:
            header = _header(frames[0])
            if isinstance(header, DataHeader) and (header.stream, header.rank, header.index) in self.delivered:
                return None  # sent again after it was read and released (a reconnect): a duplicate, nothing lost
            delivery.problem = str(exc)
            return delivery
        if ref is None:
            return delivery
        header = parse_header(frames[0])
        self.delivered.add((header.stream, header.rank, header.index))
        if self.copy:
            self._release(routing, ref.generation)
        else:
            delivery.done = lambda: self._release(routing, ref.generation)
        return delivery

    def _release(self, routing: list[zmq.Frame], generation: int) -> None:
        if not self.socket.closed:
            self.socket.send_multipart([*routing, released(generation)])

    def close(self) -> None:
        super().close()
        self.maps.close()


def _header(frame: Any) -> DataHeader | EndMessage | None:
    try:
        return parse_header(frame)
    except WireFormatError:
        return None
