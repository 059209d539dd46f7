"""What every transport gives the Client: deliveries of raw message frames, then the end of the stream."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from beamstream.wire import DataMessage, EndMessage
from beamstream.wire.control import Verdict
from beamstream.wire.metadata import RunMetadata


def _nothing(*args: Any) -> None:
    return None


@dataclass(slots=True)
class Delivery:
    """One message's frames as they arrived.

    ``receipt(message)`` is called once the frames are parsed (a direct transport tells the
    producer it has the message), or ``refuse(reason)`` instead when the Client will not take
    it (a message of another stream: a direct transport tells its producer why); ``done()``
    once the application asks for the next message (a group member acknowledges it, so a
    message being worked on when a consumer dies goes to another member). ``skipped``: the
    running count of messages a lossy reader skipped, where the transport knows it.
    """

    frames: list[Any]
    receipt: Callable[[DataMessage | EndMessage], None] = _nothing
    refuse: Callable[[str], None] = _nothing
    done: Callable[[], None] = _nothing
    skipped: int | None = None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The stream has ended for this reader: a buffer's verdict on it, and the final skipped count."""

    verdict: Verdict
    skipped: int | None = None


Silence = None
"""Yielded by :meth:`Transport.deliveries` when nothing arrived for the timeout (the Client then raises)."""


class Transport(ABC):
    """A way of reading one stream.

    ``where`` names it in messages (endpoints or URL). ``ends_with_verdict``: True if the
    stream ends when the transport yields a :class:`StreamEnd` (a buffer decides), False if it
    ends when every producer's end message has arrived (the Client decides).
    """

    where: str
    ends_with_verdict: bool

    def metadata(self) -> RunMetadata | None:
        """The stream's description where the transport learns it apart from the messages (a buffer
        sends or stores it), else None."""
        return None

    @abstractmethod
    def deliveries(self, timeout: float | None) -> Iterator[Delivery | StreamEnd | None]:
        """Deliveries as they come; :data:`Silence` (None) after ``timeout`` seconds without one."""

    @abstractmethod
    def close(self) -> None:
        """Release sockets and connections; safe to call twice."""
