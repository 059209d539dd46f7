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
(completed, failed, cancelled) has been sent. A comment line (``: keep-alive``) goes out every
:data:`KEEP_ALIVE_S` seconds, so that proxies keep the connection open and a departed client is
noticed. sse-starlette (:func:`event_source`) writes the events, lines ended by ``\n``.

The job store tells each follower of a stream when it changes it (:mod:`beamstream.service.notifier`);
a follower also looks every :data:`FALLBACK_POLL_S` seconds, so that changes made by another process
on the same database (a restarted service, say) are seen too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from beamstream.protocol.states import State
from beamstream.service.store import JobStore, StreamRecord

FALLBACK_POLL_S = 3.0  # between two looks at the store when no change was notified
KEEP_ALIVE_S = 15.0
LINE_END = "\n"


def change_event(record: StreamRecord, index: int, view: dict[str, Any]) -> ServerSentEvent:
    """The ``index``-th change of ``record`` as an event, carrying the stream as it was right after that change
    (``view``: the stream as the API shows it now)."""
    change = record.history[index]
    data = {"state": change.state.value, "reason": change.reason, "at": change.at, "stream": view_at(view, index)}
    return ServerSentEvent(json.dumps(data, separators=(",", ":")), id=str(index), event="change", sep=LINE_END)


def event_source(events: AsyncIterable[ServerSentEvent]) -> EventSourceResponse:
    """The ``text/event-stream`` answer sending ``events``, with a ``: keep-alive`` comment every
    :data:`KEEP_ALIVE_S` seconds, never stored by a cache nor buffered by a proxy."""
    return EventSourceResponse(events, sep=LINE_END, ping=KEEP_ALIVE_S,
                               ping_message_factory=lambda: ServerSentEvent(comment="keep-alive", sep=LINE_END))


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
                        view: Callable[[StreamRecord], dict[str, Any]]) -> AsyncIterator[ServerSentEvent]:
    """The stream's changes after the ``after``-th (-1: all of them) as events, until a final one was sent: read
    again each time the store says the stream changed, and every :data:`FALLBACK_POLL_S` seconds."""
    sent = after
    with store.changes.watch(stream_id) as changed:  # before the first reading: no change is missed
        while True:
            record = await asyncio.to_thread(store.get, stream_id)
            current = view(record)
            for index in range(sent + 1, len(record.history)):
                yield change_event(record, index, current)
                sent = index
            if record.state.final:
                return
            await changed.wait(FALLBACK_POLL_S)
