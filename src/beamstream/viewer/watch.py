"""Streams watched for pages that a server shows (the request service's ``/ui``): one reader per stream, shared by
every page that shows it, started when a page first asks for a frame of it and stopped once none has asked for
:data:`LINGER_S` seconds.

A stream's reader is a :class:`~beamstream.client.Client`, a member of the lossy consumer group :data:`GROUP` of
the stream's buffer (so that it never holds the stream back), holding the stream's key, reading on a thread into
the stream's :class:`~beamstream.viewer.latest.Latest` (:func:`~beamstream.viewer.latest.read_into`); it gives up
after :data:`SILENT_S` seconds without a word from the buffer. Streams nobody asked about for :data:`LINGER_S`
seconds are forgotten whenever any page asks (their readers stop at their next message, or when their stream
ends or goes silent); until then a page that comes (back) shares the same reader, and, once the stream has
ended, its last event and verdict.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from beamstream.client import Client
from beamstream.transport import copies_if_shared
from beamstream.viewer.latest import Latest, read_into

LINGER_S = 30.0
GROUP = "web-viewer"
SILENT_S = 60.0


@dataclass
class Watched:
    """One watched stream: what its pages show, its reader's stop flag, and when a page last asked about it."""

    latest: Latest
    seen: float
    stop: threading.Event = field(default_factory=threading.Event)


class Watches:
    """The streams watched now, by id (see the module)."""

    def __init__(self, linger_s: float = LINGER_S) -> None:
        self.linger_s = linger_s
        self._lock = threading.Lock()
        self._watched: dict[str, Watched] = {}

    def latest(self, stream_id: str, endpoint: str, key: str | None, where: str = "") -> Latest:
        """A page asks about ``stream_id``: its Latest, read from the buffer's consumer ``endpoint`` with the stream's
        ``key`` by a reader started now if none reads it (``where``: the stream's name on the page). Whatever
        making the Client raises (OptionError, TransportError), nothing is kept."""
        now = time.monotonic()
        with self._lock:
            for unseen in [name for name, watched in self._watched.items() if now - watched.seen > self.linger_s]:
                self._watched.pop(unseen).stop.set()
            watched = self._watched.get(stream_id)
            if watched is None:
                client = Client(endpoint, group=GROUP, lossy=True, key=key, timeout=SILENT_S,
                                **copies_if_shared(endpoint))  # the pages keep the newest event
                watched = self._watched[stream_id] = Watched(Latest(where), now)
                threading.Thread(target=read_into, args=(watched.latest, client, watched.stop),
                                 name=f"beamstream-watch-{stream_id}", daemon=True).start()
            watched.seen = now
            return watched.latest

    def watching(self, stream_id: str) -> bool:
        """Whether a reader reads ``stream_id`` for pages now (or did, and its stream has ended since)."""
        with self._lock:
            return stream_id in self._watched
