"""One stream requested from a request service (:class:`Stream`), as it was last seen: its state and history,
followed as the service pushes each change; a :class:`~beamstream.client.Client` that reads it; cancel; its jobs'
logs. Made by :class:`~beamstream.service_client.ServiceClient`, never directly."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from beamstream.client import Client, Event
from beamstream.errors import BeamstreamError, ServiceError, StreamEnded
from beamstream.protocol.models import Credentials, Resources, StreamView
from beamstream.protocol.states import State
from beamstream.service_client.changes import Change, follow, typed_view
from beamstream.transport import unreachable

if TYPE_CHECKING:
    from beamstream.accounting import StreamReport
    from beamstream.service_client.client import ServiceClient

DEFAULT_GROUP = "default"
READ_TIMEOUT = 60.0  # a stream's producers start only once it runs: time enough for its first message
MAX_LINE = 1 << 20  # characters of a followed log line; a longer one comes in pieces


class Stream:
    """A stream requested from a :class:`~beamstream.service_client.ServiceClient`, as it was last seen.

    :attr:`info` is the stream as the service last showed it (``GET /v1/streams/{id}``: state, history, endpoints,
    verdict, resources), typed: a :class:`~beamstream.protocol.models.StreamView`, its ``state`` and each change's in
    ``history`` a :class:`~beamstream.protocol.states.State`; :attr:`resources` its resources, typed;
    :meth:`refresh` and :meth:`changes` renew them. :attr:`view` is the same as a dict (kept for compatibility).
    ``report`` is the account of the last iteration over the stream (None before one).
    The stream's credentials (:meth:`credentials`) are kept from the service's answer to the request, or
    asked for once; they are never part of ``info``, ``view`` or the repr.

    Used as a context manager (``with service.request(spec) as stream:``), the stream is cancelled when an
    exception (an error, KeyboardInterrupt) leaves the block, unless it is kept (:meth:`keep`) or has ended;
    leaving the block otherwise leaves it as it is. Iterating it, inside ``with`` or not, cancels it likewise when
    an exception interrupts the iteration itself (:meth:`__iter__`). Only a stream this caller requested
    (:meth:`ServiceClient.request`) is cancelled so; one looked up (:meth:`ServiceClient.stream`, ``find``,
    ``streams``), which may be another's, is kept unless told otherwise (``keep(False)``).
    """

    _info: StreamView | None

    def __init__(self, service: ServiceClient, view: dict[str, Any],
                 credentials: dict[str, str] | Credentials | None = None) -> None:
        self.service = service
        self.view = view
        self.report: StreamReport | None = None
        self.kept = True  # ServiceClient.request makes its stream cancellable on interrupt
        self._credentials = None if credentials is None else Credentials.model_validate(credentials)

    @property
    def view(self) -> dict[str, Any]:
        """The stream as the service last showed it, as a dict (its JSON, with each state a :class:`State`); kept
        for compatibility: :attr:`info` is the same, typed."""
        return self._view

    @view.setter
    def view(self, view: dict[str, Any]) -> None:
        self._view = typed_view(view)
        self._info = None

    @property
    def info(self) -> StreamView:
        """The stream as the service last showed it, typed (:class:`~beamstream.protocol.models.StreamView`; a
        pydantic ValidationError if the service's answer is not one)."""
        if self._info is None:
            self._info = StreamView.model_validate(self._view)
        return self._info

    @property
    def resources(self) -> Resources:
        """What the stream's jobs may use, as the service recorded the request
        (:class:`~beamstream.protocol.models.Resources`)."""
        return Resources.model_validate(self._view["resources"])

    def keep(self, keep: bool = True) -> Stream:
        """Keep the stream (or, with ``keep`` False, no longer) when an error or Ctrl-C interrupts its use: it then
        goes on running; return it."""
        self.kept = keep
        return self

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> None:
        if exc is not None:
            self._cancel_after(exc)

    def _cancel_after(self, exc: BaseException) -> None:
        """Cancel the stream because ``exc`` interrupted its use, unless it is kept, it has ended, or ``exc`` is
        a GeneratorExit (an iteration left early, as by ``break``). A cancel the service refuses for any other
        reason than that the stream has ended meanwhile is told in a note on ``exc``, which goes on."""
        if self.kept or self.state.final or isinstance(exc, GeneratorExit):
            return
        try:
            self.cancel()
        except ServiceError as refused:
            if refused.status != 409:
                exc.add_note(f"stream {self.id} was left running: it could not be cancelled: {refused}")

    def credentials(self) -> Credentials:
        """The stream's credentials: ``.stream``, its id, and ``.key``, its key as text (as
        :meth:`StreamKey.from_text <beamstream.security.streamkey.StreamKey.from_text>` reads it): from the
        answer to the request, else ``GET /v1/streams/{id}/credentials`` once. They go to the stream's owner only:
        ServiceError (404) for anyone else, an admin too, as for an unknown stream."""
        if self._credentials is None:
            self._credentials = Credentials.model_validate(self.service.call("GET", f"{self.path}/credentials").json())
        return self._credentials

    @property
    def id(self) -> str:
        return self.view["id"]

    @property
    def path(self) -> str:
        """The stream's path in the service's API, ``/v1/streams/{id}``."""
        return stream_path(self.id)

    @property
    def state(self) -> State:
        return self.view["state"]

    def __repr__(self) -> str:
        return f"<Stream {self.id} {self.state.value}>"

    def refresh(self) -> Stream:
        """Read the stream's view again; return this stream."""
        self.view = self.service.call("GET", self.path).json()
        return self

    def changes(self, after: int | None = None) -> Iterator[Change]:
        """The stream's state changes, from the first in its history (or the one after index ``after``)
        to its final one, each as soon as the service pushes it; ``view`` follows them.

        A connection that drops before the final change is made again, going on after the last
        change seen; ServiceError if the service cannot be reached again within its ``timeout``.
        """
        return follow(self, after, deadline=None)

    def wait_until_running(self, timeout: float | None = None) -> Stream:
        """Return this stream once it runs (at once if it ran already, even if it has ended since).

        StreamEnded if it failed or was cancelled before it ran, with the reason;
        StreamTimeout if it does not run within ``timeout`` seconds (None: wait as long as it takes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with closing(follow(self, None, deadline)) as changes:  # they end with a final change, if none ran
            change = next(change for change in changes if change.state is State.RUNNING or change.state.final)
        if change.state is not State.RUNNING:
            raise StreamEnded(f"stream {self.id} {change.state.value} before it ran: {change.reason}",
                              detail=change.reason)
        return self

    def client(self, group: str = DEFAULT_GROUP, relay: bool = False, **client_options: Any) -> Client:
        """A :class:`~beamstream.client.Client` reading this stream as a member of ``group``.

        Directly from the stream's buffer (its ``endpoints.consumers``; the view is read again if
        it has none yet), or with ``relay`` through the service's HTTP relay, for a consumer that
        cannot reach the buffer. ``client_options`` go to the Client (``timeout`` defaults to
        :data:`READ_TIMEOUT`; ``key`` to the stream's key, from :meth:`credentials`, when the caller has them:
        an admin reading another's stream has not, and reads without it). ServiceError if the stream has no
        endpoint yet (it does not run), or if this machine cannot reach the endpoint (saying why, and to read
        through the relay).
        """
        client_options.setdefault("timeout", READ_TIMEOUT)
        if "key" not in client_options:
            key = self._key()
            if key is not None:
                client_options["key"] = key
        if relay:
            if self.service.tls is not None:
                client_options.setdefault("tls", self.service.tls)
            if self.service.token is not None:
                client_options.setdefault("token", self.service.token)
            return Client(f"{self.service.url}{self.path}", group=group, **client_options)
        if not (self.view.get("endpoints") or {}).get("consumers"):
            self.refresh()
        endpoint = (self.view.get("endpoints") or {}).get("consumers")
        if not endpoint:
            raise ServiceError(f"stream {self.id} is {self.state.value} and has no endpoint to read yet; "
                               "wait_until_running() first")
        if (why := unreachable(endpoint)) is not None:
            raise ServiceError(f"stream {self.id}'s buffer advertises {endpoint}, which this machine cannot reach "
                               f"({why}): read it through the service's relay (relay=True, or `beamstream consume "
                               f"{self.service.url}{self.path}`), or have the service's operator set data_advertise "
                               "to an address readers reach")
        return Client(endpoint, group=group, **client_options)

    def _key(self) -> str | None:
        """The stream's key, or None when the service gives this caller none (404: not the owner, or a stream
        or a service without credentials)."""
        try:
            return self.credentials().key
        except ServiceError as exc:
            if exc.status == 404:
                return None
            raise

    def __iter__(self) -> Iterator[Event]:
        """Wait until the stream runs, then yield its events read from its buffer as group ``default``.

        Afterwards ``report`` is the account of what arrived (also when StreamIncomplete ends the
        iteration). For another group, the relay or Client options, iterate :meth:`client`'s events.

        An exception raised while the iteration waits (for the stream to run, for its next event), Ctrl-C
        included, cancels the stream unless it is kept (:meth:`keep`). One raised by the body of the loop does not
        pass through the iteration: iterate inside ``with`` for the stream to be cancelled then too.
        """
        try:
            self.wait_until_running()
            with self.client() as client:
                try:
                    yield from client.events()
                finally:
                    self.report = client.report
        except BaseException as exc:
            self._cancel_after(exc)
            raise

    def cancel(self) -> Stream:
        """Cancel the stream (its jobs are stopped); return it, cancelled. ServiceError (409) if it has ended."""
        self.view = self.service.call("DELETE", self.path).json()
        return self

    def logs(self, tail: int | None = None, lines: int | None = None) -> str:
        """The output of the stream's jobs, buffer first, each file headed ``==> ROLE (FILE) <==``: the last
        ``lines`` lines of each, whole (within its last ``tail`` bytes); with ``tail`` alone, exactly its last
        ``tail`` bytes (which may start mid-line); with neither, the whole lines of the service's default tail."""
        return self.service.call("GET", f"{self.path}/logs", params=_logs_params(tail, lines)).text

    def follow_logs(self, tail: int | None = None, lines: int | None = None) -> Iterator[str]:
        """The lines of :meth:`logs` (without their line endings), then each line the stream's jobs write, as they
        write it, until the stream has ended and its jobs' output has been read to its end (as ``kubectl logs -f``).

        It waits as long as the jobs write nothing (the service's ``timeout`` bounds the connection, not the
        silence). A line longer than :data:`MAX_LINE` characters comes cut in pieces of that length.
        ServiceError if the service refuses, or the connection drops before the end.
        """
        service = self.service
        params = {**_logs_params(tail, lines), "follow": "true"}
        try:
            with service.http.stream("GET", f"{self.path}/logs", params=params,
                                     timeout=httpx.Timeout(service.timeout, read=None)) as response:
                service.check(response)
                yield from bounded_lines(response.iter_text())
        except httpx.TransportError as exc:
            raise service.unreachable(exc) from None


class AmbiguousStreamId(BeamstreamError, LookupError):
    """The start of a stream id that several of the caller's streams' ids start with (``candidates``)."""

    def __init__(self, prefix: str, candidates: list[Stream]) -> None:
        lines = [f"{stream.id}  {stream.state.value:<9}  {stream.view.get('name') or ''}" for stream in candidates]
        super().__init__(f"{prefix!r} is the start of the ids of {len(candidates)} of your streams; give more of "
                         "the id:\n  " + "\n  ".join(lines))
        self.prefix = prefix
        self.candidates = candidates


def bounded_lines(texts: Iterable[str], longest: int = MAX_LINE) -> Iterator[str]:
    """The lines of ``texts`` (pieces of one text), without their line endings (``\\n``, ``\\r\\n``), a line longer
    than ``longest`` characters in pieces of that length (httpx's ``iter_lines`` would hold it whole)."""
    pending = ""
    for text in texts:
        pending += text
        start = 0
        while True:
            end = pending.find("\n", start, start + longest + 1)
            if end >= 0:
                yield pending[start:end].removesuffix("\r")
                start = end + 1
            elif len(pending) - start > longest:
                yield pending[start:start + longest]
                start += longest
            else:
                break
        pending = pending[start:]
    if pending:
        yield pending


def _logs_params(tail: int | None, lines: int | None) -> dict[str, int]:
    return {name: value for name, value in (("tail", tail), ("lines", lines)) if value is not None}


def stream_path(stream_id: str) -> str:
    return f"/v1/streams/{quote(stream_id, safe='')}"
