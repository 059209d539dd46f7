"""A stream's state changes as Server-Sent Events (``GET /v1/streams/{id}/events``).

Each change in the stream's history is one event::

    id: 2
    event: change
    data: {"state": "running", "reason": "...", "at": 1764151234.5, "stream": {...}}

``id`` is the change's index in the history (0 for ``queued``), so a client that reconnects
with ``Last-Event-ID: N`` (or ``?after=N``) gets only the changes after the N-th; ``stream`` is
the stream as ``GET /v1/streams/{id}`` showed it right after that change (:func:`view_at`), however
long ago it was made: in that change's state, with its history up to that change. The answer starts with
every change already recorded, follows the stream as it changes, and ends once a final state
(completed, failed, cancelled) has been sent. While nothing changes, a comment line
(``: keep-alive``) goes out every :data:`KEEP_ALIVE_S` seconds, so that proxies keep the
connection open and a departed client is noticed.

The job store is polled (every :data:`POLL_S` seconds) rather than notified, so changes made
by another process on the same database (a restarted service, say) are seen too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from beamstream.protocol.states import State
from beamstream.service.store import JobStore, StreamRecord

POLL_S = 0.2
KEEP_ALIVE_S = 15.0


def change_event(record: StreamRecord, index: int, view: dict[str, Any]) -> str:
    """The SSE text of the ``index``-th change of ``record``, carrying the stream as it was right after that change
    (``view``: the stream as the API shows it now)."""
    change = record.history[index]
    data = {"state": change.state.value, "reason": change.reason, "at": change.at, "stream": view_at(view, index)}
    return f"id: {index}\nevent: change\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def view_at(view: dict[str, Any], index: int) -> dict[str, Any]:
    """``view`` (a stream as the API shows it now, in JSON) as it was right after its ``index``-th change: in that
    change's state, its history up to that change, updated then; with its endpoints only once it had run (the
    buffer gives them with the change to running), and its verdict only with its final change (which brings it)."""
    history = view["history"][:index + 1]
    state = State(history[-1]["state"])
    ran = any(change["state"] == State.RUNNING.value for change in history)
    return {**view, "state": state.value, "history": history, "updated": history[-1]["at"],
            "endpoints": view["endpoints"] if ran else None, "verdict": view["verdict"] if state.final else None}


async def change_events(store: JobStore, stream_id: str, after: int,
                        view: Callable[[StreamRecord], dict[str, Any]]) -> AsyncIterator[str]:
    """The stream's changes after the ``after``-th (-1: all of them) as SSE text, until a final one was sent."""
    sent = after
    quiet_since = time.monotonic()
    while True:
        record = await asyncio.to_thread(store.get, stream_id)
        current = view(record)
        for index in range(sent + 1, len(record.history)):
            yield change_event(record, index, current)
            sent = index
            quiet_since = time.monotonic()
        if record.state.final:
            return
        if time.monotonic() - quiet_since >= KEEP_ALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)
