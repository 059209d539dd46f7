"""The newest event of a stream and its figures, kept for the viewer's pages: one reader offers, pages take.

:class:`Latest` keeps only a reference to the newest message's last event (its arrays stay views of the
received message: nothing is copied or encoded until a page asks; over ``shm://`` the reader reads copies, see
:func:`~beamstream.transport.copies_if_shared`), so whoever reads the stream is never held up by the pages; a page
gets the newest event when it asks, and whatever arrived meanwhile is never drawn.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from beamstream.errors import BeamstreamError, StreamIncomplete

if TYPE_CHECKING:
    import numpy as np

    from beamstream.accounting import StreamReport
    from beamstream.client.reader import Client, Message

RATE_WINDOW_S = 2.0  # events/s is measured over this many seconds of sequence numbers


class Latest:
    """The newest event offered (its arrays), the stream's figures, and a version that grows with each change.

    States: ``waiting`` (nothing yet), ``live``, then ``complete``, ``incomplete`` (the stream lacks events,
    or its buffer says so), or ``ended`` (the reading stopped for another reason, said in ``detail``).
    ``events/s`` is the stream's rate, measured from the newest sequence number over :data:`RATE_WINDOW_S`
    seconds, so that it counts the events a lossy reader skipped too. Safe to use from any thread.
    """

    def __init__(self, where: str = "") -> None:
        self.where = where
        self._changed = threading.Condition()
        self._version = 0
        self._data: Mapping[str, np.ndarray] | None = None
        self._seq = -1
        self._state = "waiting"
        self._detail = ""
        self._events = 0
        self._skipped = 0
        self._seen: deque[tuple[float, int]] = deque()

    def offer(self, message: Message, report: StreamReport) -> None:
        """Take ``message``'s last event as the newest, and ``report``'s figures (events received, skipped)."""
        data = {name: array[-1] for name, array in message.arrays.items()}
        seq = int(message.header.seq.max()) if len(message.header.seq) else self._seq
        now = time.monotonic()
        with self._changed:
            self._data = data
            self._seq = max(self._seq, seq)
            self._seen.append((now, self._seq))
            self._events = report.events
            self._skipped = report.skipped
            self._state = "live"
            self._version += 1
            self._changed.notify_all()

    def finish(self, state: str, detail: str, report: StreamReport | None = None) -> None:
        """The stream ended for this reader: ``state`` (``complete``, ``incomplete`` or ``ended``) and why."""
        with self._changed:
            self._state, self._detail = state, detail
            if report is not None:
                self._events, self._skipped = report.events, report.skipped
            self._version += 1
            self._changed.notify_all()

    def passing(self, client: Client) -> Iterator[Message]:
        """``client``'s messages, each offered here as it passes; the end of the stream is recorded (then raised
        again, if it was an error): ``complete``, ``incomplete`` (StreamIncomplete) or ``ended`` (another
        BeamstreamError, or the iteration left early)."""
        try:
            yield from self.offering(client.messages(), client.report)
        except StreamIncomplete as exc:
            self.finish("incomplete", str(exc).splitlines()[0], client.report)
            raise
        except BeamstreamError as exc:
            self.finish("ended", str(exc), client.report)
            raise
        except GeneratorExit:
            self.finish("ended", "the viewer stopped reading", client.report)
            raise
        self.finish("complete", client.report.summary().splitlines()[0], client.report)

    def offering(self, messages: Iterable[Message], report: StreamReport) -> Iterator[Message]:
        """``messages`` as they come, each offered here (with ``report``'s figures) before it is passed on."""
        for message in messages:
            self.offer(message, report)
            yield message

    def status(self) -> dict[str, Any]:
        """The figures a page shows: ``state``, ``detail``, ``seq`` (the newest), ``events`` (received), ``skipped``
        (messages a lossy reader skipped), ``rate`` (the stream's events/s), ``version`` and ``where``."""
        with self._changed:
            return self._status()

    def _status(self) -> dict[str, Any]:
        now = time.monotonic()
        while self._seen and now - self._seen[0][0] > RATE_WINDOW_S:
            self._seen.popleft()
        rate = 0.0
        if len(self._seen) > 1 and self._state == "live":
            (first, low), (_, high) = self._seen[0], self._seen[-1]
            rate = (high - low) / max(now - first, 1e-3)
        return {"state": self._state, "detail": self._detail, "seq": self._seq, "events": self._events,
                "skipped": self._skipped, "rate": round(rate, 1), "version": self._version, "where": self.where}

    def newer(self, than: int, wait_s: float) -> tuple[Mapping[str, np.ndarray] | None, dict[str, Any]]:
        """Wait up to ``wait_s`` seconds for a version newer than ``than``; then the newest event (None if there is
        none newer than ``than``) and the :meth:`status`."""
        with self._changed:
            self._changed.wait_for(lambda: self._version > than, timeout=wait_s)
            return (self._data if self._version > than else None), self._status()


def read_into(latest: Latest, client: Client, stop: threading.Event) -> None:
    """Read ``client``'s stream into ``latest`` until it ends or ``stop`` is set (seen at the next message);
    close ``client``. The end is recorded in ``latest``, never raised."""
    with client:
        try:
            for _ in latest.passing(client):
                if stop.is_set():
                    break
        except BeamstreamError:
            return  # recorded by latest.passing
