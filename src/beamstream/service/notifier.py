"""Tells whoever follows a stream that it changed, the moment the job store records the change.

The job store calls :meth:`Notifier.notify` after each state change it committed, from whatever thread made it
(a route, the dispatcher's thread); a follower, in an event loop, holds a :class:`Watch` on the stream and
awaits :meth:`Watch.wait`, which returns as soon as the stream changed (or after a timeout: a change made by
another process on the same database, such as a service restarted meanwhile, is not notified here, so a
follower still looks now and then).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Watch:
    """One follower's watch on one stream: :meth:`wait` returns once the stream changed since the last
    :meth:`wait` returned (or since the watch began)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Event()

    def _set(self) -> None:
        """Mark the stream changed; safe from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._changed.set)
        except RuntimeError:  # its loop has closed: nobody waits any more
            pass

    async def wait(self, timeout: float) -> bool:
        """Whether the stream changed, waiting up to ``timeout`` seconds for it to."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        self._changed.clear()
        return True


class Notifier:
    """The watches on each stream; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}

    def notify(self, stream_id: str) -> None:
        """The stream ``stream_id`` changed: wake those who watch it."""
        with self._lock:
            watches = list(self._watches.get(stream_id, ()))
        for watch in watches:
            watch._set()

    @contextmanager
    def watch(self, stream_id: str) -> Iterator[Watch]:
        """A watch on ``stream_id``, for the running event loop, while the block runs. Begin it before reading
        the stream, so that no change made after the reading is missed."""
        watch = Watch(asyncio.get_running_loop())
        with self._lock:
            self._watches.setdefault(stream_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches.get(stream_id, set())
                watches.discard(watch)
                if not watches:
                    self._watches.pop(stream_id, None)
