"""A stream's state changes as the service pushes them (``GET /v1/streams/{id}/events``).

The changes come as server-sent events, read with httpx-sse; a connection that drops, is refused or goes silent
is made again (:func:`~beamstream.retrying.retrying`: growing pauses), going on after the last change seen
(``Last-Event-ID``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from beamstream.errors import ServiceError, StreamTimeout
from beamstream.protocol.models import StreamView
from beamstream.protocol.states import State
from beamstream.retrying import WAIT_INITIAL_S, retrying

if TYPE_CHECKING:
    from beamstream.service_client.stream import Stream


@dataclass(frozen=True, slots=True)
class Change:
    """One state change of a stream: its index in the stream's history (0 is ``queued``), the new
    state, why, when (seconds since the epoch), and the stream's view as the service sent it (:attr:`info`: the
    same, typed)."""

    index: int
    state: State
    reason: str
    at: float
    view: dict[str, Any]

    @property
    def info(self) -> StreamView:
        """The stream as of this change, typed (:class:`~beamstream.protocol.models.StreamView`)."""
        return StreamView.model_validate(self.view)


def follow(stream: Stream, after: int | None, deadline: float | None) -> Iterator[Change]:
    """The changes of ``stream`` after index ``after`` (all if None) until the final one, each also made
    ``stream.view``; connecting again as needed. StreamTimeout once ``deadline`` (monotonic) passes; ServiceError
    when the service refuses, or cannot be reached again after being silent for its client's ``timeout``."""
    last, heard = after, time.monotonic()  # heard: when the service last said something
    while True:
        response = _connect(stream, last, deadline, heard)
        body = _Listening(response.stream, lambda: check_deadline(stream, deadline))
        response.stream = body
        try:
            for event in EventSource(response).iter_sse():
                if event.event != "change":
                    continue
                change = _change(event)
                last, stream.view = change.index, change.view
                yield change
                if change.state.final:
                    return
        except httpx.TransportError as exc:  # dropped, or silent (no keep-alive) for too long
            _give_up_unless_retried(stream, exc, deadline, body.heard)
        finally:
            heard = body.heard
            response.close()
        check_deadline(stream, deadline)  # it ended before the final change: connect again, after a pause
        time.sleep(_capped(WAIT_INITIAL_S, deadline))


class _Listening(httpx.SyncByteStream):
    """The body of the service's answer, noting when its latest bytes came (:attr:`heard`; a comment such as
    ``: keep-alive`` counts, which httpx-sse does not hand on) and calling ``check`` before handing each on."""

    def __init__(self, body: Any, check: Callable[[], None]) -> None:
        self.body = body
        self.check = check
        self.heard = time.monotonic()

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.body:
            self.heard = time.monotonic()
            self.check()
            yield piece

    def close(self) -> None:
        self.body.close()


def check_deadline(stream: Stream, deadline: float | None) -> None:
    """StreamTimeout once ``deadline`` (monotonic; None: none) has passed, with ``stream`` still not running."""
    if deadline is not None and time.monotonic() >= deadline:
        raise StreamTimeout(f"stream {stream.id} is still {stream.state.value}: it did not run within the timeout")


def _connect(stream: Stream, last: int | None, deadline: float | None, heard: float) -> httpx.Response:
    """The service's open answer to ``GET .../events`` for the changes after index ``last``, its headers read;
    tried again (:func:`~beamstream.retrying.retrying`) while connecting fails, until ``deadline`` (then
    StreamTimeout) and as long as the service has not been silent for longer than its client's ``timeout`` since
    ``heard`` (then the client's ServiceError)."""
    left = math.inf if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        for attempt in retrying(httpx.TransportError, for_s=left):
            with attempt:
                try:
                    return _open(stream, last, deadline)
                except httpx.TransportError as exc:
                    _give_up_unless_retried(stream, exc, deadline, heard)
                    raise
    except httpx.TransportError:
        if deadline is None:
            raise
        time.sleep(max(0.0, deadline - time.monotonic()))  # the next try would come after the deadline
        check_deadline(stream, deadline)
        raise
    raise AssertionError("a retry loop ended without a result or an error")  # for type checkers


def _open(stream: Stream, last: int | None, deadline: float | None) -> httpx.Response:
    """One try of :func:`_connect`; the read timeout is the client's ``timeout``, or what is left before
    ``deadline`` if less. ServiceError for a refusal, or an answer that is no event stream."""
    service = stream.service
    read_timeout = service.timeout if deadline is None else max(0.01, min(service.timeout,
                                                                          deadline - time.monotonic()))
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    request = service.http.build_request("GET", f"{stream.path}/events", headers=headers,
                                         timeout=httpx.Timeout(service.timeout, read=read_timeout))
    response = service.http.send(request, stream=True)
    try:
        service.check(response)
        kind = response.headers.get("content-type", "").partition(";")[0].strip()
        if kind != "text/event-stream":
            raise ServiceError(f"the service answered GET {request.url.path} with {kind or 'no content type'}, not "
                               "text/event-stream: is a proxy in the way?", response.status_code)
    except BaseException:
        response.close()
        raise
    return response


def _give_up_unless_retried(stream: Stream, exc: httpx.TransportError, deadline: float | None,
                            heard: float) -> None:
    """Return if the connection that failed with ``exc`` is to be made again; else raise StreamTimeout (the
    ``deadline`` passed) or the client's ServiceError for a service that cannot be reached (it failed otherwise
    than by a read timeout, and said nothing since ``heard`` for longer than the client's ``timeout``)."""
    check_deadline(stream, deadline)
    service = stream.service
    if not isinstance(exc, httpx.ReadTimeout) and time.monotonic() - heard > service.timeout:
        raise service.unreachable(exc) from None


def _capped(wait: float, deadline: float | None) -> float:
    """``wait`` seconds, or what is left before ``deadline`` (monotonic) if less."""
    return wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic()))


def _change(event: ServerSentEvent) -> Change:
    """The state change a ``change`` event carries; ServiceError for one that does not follow the contract."""
    try:
        data = json.loads(event.data)
        return Change(int(event.id), State(data["state"]), str(data["reason"]), float(data["at"]),
                      typed_view(data["stream"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise ServiceError(f"the service sent a state change that cannot be read ({exc}): id {event.id!r}, "
                           f"data {event.data[:200]!r}") from None


def typed_view(view: dict[str, Any]) -> dict[str, Any]:
    """``view`` (a stream as the service shows it, in JSON) with its state and its changes' states as :class:`State`
    (a ValueError for one that is not a state)."""
    typed = {**view, "state": State(view["state"])}
    if "history" in view:
        typed["history"] = [{**change, "state": State(change["state"])} for change in view["history"]]
    return typed
