"""Ask a request service (``beamstream service``) for a stream, follow it, read it.

    from beamstream import Service

    with Service("http://service.example:8080") as service, \
            service.request("spec.yaml", resources={"workers": 4}) as stream:
        for event in stream:  # waits until it runs, then reads it from its buffer as group "default"
            use(event.seq, event.data["image"])  # an error or Ctrl-C here cancels the stream
    print(stream.report.summary())

- :class:`Service`: the service's REST API under ``/v1``: request a stream, look one up (by its id or
  the start of it), list them; list an experiment's runs (:meth:`Service.runs`).
- :class:`Stream`: one requested stream: its state and history, followed as the service pushes
  each change (:meth:`Stream.changes`, server-sent events); a :class:`~beamstream.client.Client`
  that reads it from its buffer or through the service's relay; cancel; its jobs' logs, or their
  lines as they are written (:meth:`Stream.follow_logs`). Used with
  ``with``, or iterated, it is cancelled when an error or Ctrl-C interrupts its use, unless kept
  (:meth:`Stream.keep`).

Every refusal becomes a :class:`~beamstream.errors.ServiceError` that carries the HTTP status and
the service's own words (each problem of a refused spec on its own line); a service that cannot
be reached is one too, with ``status`` None. This module needs only the core package: it talks
HTTP with httpx and imports nothing of the service's extra.
"""

from __future__ import annotations

import json
import os
import stat
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from beamstream.accounting import StreamReport
from beamstream.client import Client, Event
from beamstream.client.transports.relay import client_tls_context, tls_refusal
from beamstream.errors import BeamstreamError, OptionError, ServiceError, SpecError, StreamEnded, StreamTimeout
from beamstream.protocol.states import State

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_PROFILE = Path("~/.config/beamstream/profile.yaml")  # or $BEAMSTREAM_PROFILE
DEFAULT_GROUP = "default"
READ_TIMEOUT = 60.0  # a stream's producers start only once it runs: time enough for its first message
PAGE = 1000  # streams asked for per page when listing (the service's largest page)
MAX_LINE = 1 << 20  # characters of a followed log line; a longer one comes in pieces
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # between tries to reconnect to the events of a stream; then 5 s


@dataclass(frozen=True, slots=True)
class Change:
    """One state change of a stream: its index in the stream's history (0 is ``queued``), the new
    state, why, when (seconds since the epoch), and the stream's view as the service sent it."""

    index: int
    state: State
    reason: str
    at: float
    view: dict[str, Any]


class Service:
    """A request service's REST API at ``url``; ``timeout`` bounds each request (seconds).

    A service with mutual TLS (``https://``) takes ``cert`` and ``key``, the user's certificate and
    key (PEM files), and ``ca``, the CA certificate that verifies the service (default: the system's
    trusted CAs); the relay (:meth:`Stream.client` with ``relay``) uses them too. Instead of a
    certificate, ``token`` (a bearer token a certificate holder minted, ``POST /v1/tokens``) names the
    caller: it goes in the ``Authorization`` header of every request and of the relay's handshake
    (default: ``$BEAMSTREAM_TOKEN``; pass ``token=""`` for none). OptionError for any of them with an
    ``http://`` URL (a token must not cross a network in clear), or a certificate without its key.

    ``transport`` replaces httpx's network transport (e.g. an ``httpx.MockTransport`` in tests).
    Use it as a context manager, or :meth:`close` it, to release its connections.
    """

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 30.0, *,
                 transport: httpx.BaseTransport | None = None, cert: str | Path | None = None,
                 key: str | Path | None = None, ca: str | Path | None = None, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.tls: tuple | None = None
        self.token = os.environ.get("BEAMSTREAM_TOKEN") if token is None else token or None
        options: dict[str, Any] = {}
        if (cert, key, ca) != (None, None, None):
            if not self.url.startswith("https://"):
                raise OptionError(f"cert, key and ca apply only to an https:// service, not {self.url}")
            self.tls = (cert, key, ca)
            options["verify"] = client_tls_context(self.tls)
        if self.token is not None:
            if not self.url.startswith("https://"):
                raise OptionError(f"a bearer token goes only to an https:// service, not {self.url}: it would cross "
                                  "the network in clear (unset BEAMSTREAM_TOKEN, or use the service's https:// URL)")
            options["headers"] = {"Authorization": f"Bearer {self.token}"}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, **options)

    @classmethod
    def from_profile(cls, path: str | Path | None = None, timeout: float = 30.0, **options: Any) -> Service:
        """The service a profile names (:func:`load_profile`: ``path``, else ``$BEAMSTREAM_PROFILE``, else
        ``~/.config/beamstream/profile.yaml``), with its ``cert``, ``key`` and ``ca``; :data:`DEFAULT_URL` if
        it names none. OptionError for a profile that is missing (when named), unreadable or invalid."""
        profile = load_profile(path) or Profile()
        return cls(profile.service or DEFAULT_URL, timeout, cert=profile.cert, key=profile.key, ca=profile.ca,
                   **options)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"Service({self.url!r})"

    def request(self, spec: dict[str, Any] | str | Path | None = None, *, resources: dict[str, Any] | None = None,
                experiment: str | None = None, run: int | None = None, name: str | None = None,
                keep: bool = False) -> Stream:
        """Ask for a stream; it is queued at once and started when the service's limits allow.

        ``spec`` is a spec as a dict, or the path of a YAML or JSON spec file (read with the same
        checks as ``beamstream spec check``); its sinks may be left out (the service adds the one to
        the stream's buffer; ``beamstream spec check --for-service`` checks such a spec). With ``experiment``
        and ``run``, a source that reads files but names none reads the run's files, found by the service's
        catalogue; the spec may then be left out. ``resources``: ``workers``, ``nodes``, ``time_limit_s``,
        ``executor``, ``buffer``. With ``keep``, the stream is not cancelled when an error or Ctrl-C interrupts its
        use (:meth:`Stream.keep`).
        """
        body = {"spec": _spec_data(spec), "resources": resources, "name": name, "experiment": experiment, "run": run}
        answer = self.call("POST", "/v1/streams", json={key: value for key, value in body.items() if value is not None})
        view = answer.json()
        return Stream(self, view, credentials=view.pop("credentials", None)).keep(keep)

    def stream(self, stream_id: str) -> Stream:
        """The stream with this id, as the service shows it now."""
        return Stream(self, self.call("GET", stream_path(stream_id)).json())

    def find(self, id_or_prefix: str) -> Stream:
        """The stream with this id, else the only one whose id starts with it among the streams the service lists
        for the caller (``GET /v1/streams``: their own; an admin's, everyone's), as the service shows it now.

        ServiceError (404) if no stream's id is or starts with it; AmbiguousStreamId, naming them, if the ids of
        several start with it; OptionError for an empty one.
        """
        if not id_or_prefix:
            raise OptionError("no stream id given: give a stream's id, or the start of it")
        try:
            return self.stream(id_or_prefix)
        except ServiceError as exc:
            if exc.status != 404:
                raise
            unknown = exc
        found = [stream for stream in self.streams() if stream.id.startswith(id_or_prefix)]
        if not found:
            raise ServiceError(f"{unknown}, nor any whose id starts with {id_or_prefix!r} among yours", 404,
                               unknown.detail)
        if len(found) > 1:
            raise AmbiguousStreamId(id_or_prefix, found)
        return self.stream(found[0].id)

    def streams(self, state: State | str | None = None, experiment: str | None = None, owner: str | None = None,
                limit: int | None = None) -> list[Stream]:
        """The streams in ``state`` of ``experiment`` and ``owner`` (each filter if given), newest first:
        every one, or the first ``limit``. ValueError for a state that is not one of :class:`State`'s."""
        found: list[Stream] = []
        while limit is None or len(found) < limit:
            params = {"state": None if state is None else State(state).value, "experiment": experiment,
                      "owner": owner, "offset": len(found),
                      "limit": PAGE if limit is None else min(PAGE, limit - len(found))}
            page = self.call("GET", "/v1/streams",
                             params={key: value for key, value in params.items() if value is not None}).json()
            found += [Stream(self, view) for view in page["items"]]
            if not page["items"] or len(found) >= page["total"]:
                break
        return found

    def runs(self, experiment: str) -> list[dict[str, Any]]:
        """The runs of ``experiment`` that the service's catalogue finds, in run order, each
        ``{"run": number, "source": the source type that reads it, "files": [paths]}``. ServiceError (404) for an
        experiment the service knows no runs of, or that the caller may not read."""
        path = f"/v1/experiments/{quote(experiment, safe='')}/runs"
        return self.call("GET", path).json()["runs"]

    def call(self, method: str, path: str, **options: Any) -> httpx.Response:
        """The service's answer to ``method path`` (httpx ``options``); ServiceError for a refusal or no answer."""
        try:
            response = self.http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        self.check(response)
        return response

    def check(self, response: httpx.Response) -> None:
        """ServiceError, in the service's words, unless ``response`` succeeded."""
        if response.is_success:
            return
        response.read()
        detail = _detail(response)
        where = f"{response.request.method} {response.request.url.path}"
        separator = "\n" if "\n" in detail else " "
        raise ServiceError(f"the service refused {where} ({response.status_code} {response.reason_phrase}):"
                           f"{separator}{detail}", response.status_code, detail)

    def unreachable(self, exc: httpx.TransportError) -> ServiceError:
        """The ServiceError for a request that got no answer (``exc`` says why): when TLS refused the connection,
        on either side, why, naming the file concerned and what to do (:func:`tls_refusal`); else "no answer"."""
        refused = tls_refusal(exc, self.tls)
        if refused is not None:
            return ServiceError(f"TLS with the service at {self.url} failed: {refused}")
        return ServiceError(f"no answer from the service at {self.url}: {exc or type(exc).__name__}")


class Stream:
    """A stream requested from a :class:`Service`, as it was last seen.

    ``view`` is the stream as the service last showed it (``GET /v1/streams/{id}``: state,
    history, endpoints, verdict, resources), its ``state`` and each change's in ``history`` a
    :class:`~beamstream.protocol.states.State`; :meth:`refresh` and :meth:`changes` renew it.
    ``report`` is the account of the last iteration over the stream (None before one).
    The stream's credentials (:meth:`credentials`) are kept from the service's answer to the request, or
    asked for once; they are never part of ``view`` or the repr.

    Used as a context manager (``with service.request(spec) as stream:``), the stream is cancelled when an
    exception (an error, KeyboardInterrupt) leaves the block, unless it is kept (:meth:`keep`) or has ended;
    leaving the block otherwise leaves it as it is. Iterating it, inside ``with`` or not, cancels it likewise when
    an exception interrupts the iteration itself (:meth:`__iter__`). Only a stream this caller requested
    (:meth:`Service.request`) is cancelled so; one looked up (:meth:`Service.stream`, ``find``, ``streams``), which
    may be another's, is kept unless told otherwise (``keep(False)``).
    """

    def __init__(self, service: Service, view: dict[str, Any], credentials: dict[str, str] | None = None) -> None:
        self.service = service
        self.view = view
        self.report: StreamReport | None = None
        self.kept = True  # Service.request makes its stream cancellable on interrupt
        self._credentials = credentials

    @property
    def view(self) -> dict[str, Any]:
        return self._view

    @view.setter
    def view(self, view: dict[str, Any]) -> None:
        self._view = _typed(view)

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

    def credentials(self) -> dict[str, str]:
        """The stream's credentials, ``{"stream": id, "key": text}`` (the key as
        :meth:`StreamKey.from_text <beamstream.security.streamkey.StreamKey.from_text>` reads it): from the
        answer to the request, else ``GET /v1/streams/{id}/credentials`` once. They go to the stream's owner only:
        ServiceError (404) for anyone else, an admin too, as for an unknown stream."""
        if self._credentials is None:
            self._credentials = self.service.call("GET", f"{stream_path(self.id)}/credentials").json()
        return self._credentials

    @property
    def id(self) -> str:
        return self.view["id"]

    @property
    def state(self) -> State:
        return self.view["state"]

    def __repr__(self) -> str:
        return f"<Stream {self.id} {self.state.value}>"

    def refresh(self) -> Stream:
        """Read the stream's view again; return this stream."""
        self.view = self.service.call("GET", stream_path(self.id)).json()
        return self

    def changes(self, after: int | None = None) -> Iterator[Change]:
        """The stream's state changes, from the first in its history (or the one after index ``after``)
        to its final one, each as soon as the service pushes it; ``view`` follows them.

        A connection that drops before the final change is made again, going on after the last
        change seen; ServiceError if the service cannot be reached again within its ``timeout``.
        """
        return self._follow(after, deadline=None)

    def wait_until_running(self, timeout: float | None = None) -> Stream:
        """Return this stream once it runs (at once if it ran already, even if it has ended since).

        StreamEnded if it failed or was cancelled before it ran, with the reason;
        StreamTimeout if it does not run within ``timeout`` seconds (None: wait as long as it takes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with closing(self._follow(None, deadline)) as changes:  # they end with a final change, if none ran
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
        endpoint yet (it does not run).
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
            return Client(f"{self.service.url}{stream_path(self.id)}", group=group, **client_options)
        if not (self.view.get("endpoints") or {}).get("consumers"):
            self.refresh()
        endpoint = (self.view.get("endpoints") or {}).get("consumers")
        if not endpoint:
            raise ServiceError(f"stream {self.id} is {self.state.value} and has no endpoint to read yet; "
                               "wait_until_running() first")
        return Client(endpoint, group=group, **client_options)

    def _key(self) -> str | None:
        """The stream's key, or None when the service gives this caller none (404: not the owner, or a stream
        or a service without credentials)."""
        try:
            return self.credentials()["key"]
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
        self.view = self.service.call("DELETE", stream_path(self.id)).json()
        return self

    def logs(self, tail: int | None = None, lines: int | None = None) -> str:
        """The output of the stream's jobs, buffer first, each file headed ``==> ROLE (FILE) <==``: the last
        ``lines`` lines of each, whole (within its last ``tail`` bytes); with ``tail`` alone, exactly its last
        ``tail`` bytes (which may start mid-line); with neither, the whole lines of the service's default tail."""
        return self.service.call("GET", f"{stream_path(self.id)}/logs", params=_logs_params(tail, lines)).text

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
            with service.http.stream("GET", f"{stream_path(self.id)}/logs", params=params,
                                     timeout=httpx.Timeout(service.timeout, read=None)) as response:
                service.check(response)
                yield from bounded_lines(response.iter_text())
        except httpx.TransportError as exc:
            raise service.unreachable(exc) from None

    def _follow(self, after: int | None, deadline: float | None) -> Iterator[Change]:
        """The changes after index ``after`` (all if None) until the final one, reconnecting as needed;
        StreamTimeout once ``deadline`` (monotonic) passes."""
        service = self.service
        path = f"{stream_path(self.id)}/events"
        last, tries, heard = after, 0, time.monotonic()  # heard: when the service last said something
        while True:
            read_timeout = service.timeout if deadline is None else max(0.01, min(service.timeout,
                                                                                  deadline - time.monotonic()))
            headers = {"Accept": "text/event-stream"} | ({} if last is None else {"Last-Event-ID": str(last)})
            try:
                with service.http.stream("GET", path, headers=headers,
                                         timeout=httpx.Timeout(service.timeout, read=read_timeout)) as response:
                    service.check(response)
                    tries = 0
                    reader = EventReader()
                    for line in response.iter_lines():
                        heard = time.monotonic()
                        self._check_deadline(deadline)
                        event = reader.feed(line)
                        if event is None or event.kind != "change":
                            continue
                        change = _change(event)
                        last, self.view = change.index, change.view
                        yield change
                        if change.state.final:
                            return
            except httpx.TransportError as exc:  # refused, dropped, or silent (no keep-alive) for too long
                self._check_deadline(deadline)
                if not isinstance(exc, httpx.ReadTimeout) and time.monotonic() - heard > service.timeout:
                    raise service.unreachable(exc) from None
            delay = RETRY_DELAYS[min(tries, len(RETRY_DELAYS) - 1)]
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
            tries += 1

    def _check_deadline(self, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise StreamTimeout(f"stream {self.id} is still {self.state.value}: it did not run within the timeout")


class AmbiguousStreamId(BeamstreamError, LookupError):
    """The start of a stream id that several of the caller's streams' ids start with (``candidates``)."""

    def __init__(self, prefix: str, candidates: list[Stream]) -> None:
        lines = [f"{stream.id}  {stream.state.value:<9}  {stream.view.get('name') or ''}" for stream in candidates]
        super().__init__(f"{prefix!r} is the start of the ids of {len(candidates)} of your streams; give more of "
                         "the id:\n  " + "\n  ".join(lines))
        self.prefix = prefix
        self.candidates = candidates


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One server-sent event: its ``id`` (None if it named none), type and data."""

    id: str | None
    kind: str
    data: str


class EventReader:
    """Reads a ``text/event-stream`` line by line (the WHATWG server-sent events format): :meth:`feed`
    each line, without its line ending, and get each event as its blank line ends it."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._kind = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerEvent | None:
        """The event this line completes, if any (comments, such as ``: keep-alive``, are skipped)."""
        if not line:
            event = ServerEvent(self._id, self._kind or "message", "\n".join(self._data)) if self._data else None
            self._kind, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._kind = value
        elif field == "id" and "\0" not in value:
            self._id = value
        return None


class Profile(BaseModel):
    """A user's profile: the service they use and their TLS files, so that they type them once.

    ``service`` is a URL; ``cert``, ``key`` and ``ca`` are PEM files, relative to the profile's folder
    unless absolute (``~`` is expanded). Every entry may be left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


def profile_path(path: str | Path | None = None) -> tuple[Path, bool]:
    """The profile to read and whether it was named (``path`` or ``$BEAMSTREAM_PROFILE``) rather than the default."""
    if path is not None:
        return Path(path).expanduser(), True
    if os.environ.get("BEAMSTREAM_PROFILE"):
        return Path(os.environ["BEAMSTREAM_PROFILE"]).expanduser(), True
    return DEFAULT_PROFILE.expanduser(), False


def load_profile(path: str | Path | None = None) -> Profile | None:
    """The profile at ``path``, else ``$BEAMSTREAM_PROFILE``, else ``~/.config/beamstream/profile.yaml``.

    None when the default file does not exist. OptionError, naming the file and the entry, for a named
    file that does not exist, one that is not valid (YAML, a mapping of service, cert, key, ca; a
    service that is not http:// or https://; cert without key), or one that others can write (it
    chooses the service you talk to and the CA you trust). A warning when the key it names can be
    read by others.
    """
    from beamstream.spec_input import parse_yaml

    file, named = profile_path(path)
    try:
        text = file.read_text()
        mode = file.stat().st_mode
    except FileNotFoundError:
        if not named:
            return None
        raise OptionError(f"profile {file}: no such file") from None
    except OSError as exc:
        raise OptionError(f"profile {file}: cannot be read: {exc.strerror or exc}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OptionError(f"profile {file} can be written by others (mode {stat.S_IMODE(mode):o}): whoever can "
                          f"write it chooses the service you talk to and the CA you trust; chmod go-w {file}")
    try:
        data = parse_yaml(text, str(file))
    except SpecError as exc:
        raise OptionError(f"profile {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OptionError(f"profile {file}: expected a mapping with keys service, cert, key, ca; "
                          f"got {type(data).__name__}")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc']) or 'profile'}: {error['msg']}"
                             for error in exc.errors())
        raise OptionError(f"profile {file}: {problems}") from None
    if profile.service is not None and not profile.service.startswith(("http://", "https://")):
        raise OptionError(f"profile {file}: service: expected an http:// or https:// URL, got {profile.service!r}")
    if (profile.cert is None) != (profile.key is None):
        raise OptionError(f"profile {file}: cert and key go together")
    files = {name: (file.parent / value.expanduser()) for name in ("cert", "key", "ca")
             if (value := getattr(profile, name)) is not None}
    profile = profile.model_copy(update=files)
    if profile.key is not None:
        try:
            if profile.key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.warn(f"profile {file}: key {profile.key} can be read by others; chmod 600 {profile.key}",
                              stacklevel=2)
        except OSError:
            pass  # a missing key is reported when it is used
    return profile


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


def _change(event: ServerEvent) -> Change:
    """The state change a ``change`` event carries; ServiceError for one that does not follow the contract."""
    try:
        data = json.loads(event.data)
        return Change(int(event.id or ""), State(data["state"]), str(data["reason"]), float(data["at"]),
                      _typed(data["stream"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise ServiceError(f"the service sent a state change that cannot be read ({exc}): id {event.id!r}, "
                           f"data {event.data[:200]!r}") from None


def _typed(view: dict[str, Any]) -> dict[str, Any]:
    """``view`` (a stream as the service shows it, in JSON) with its state and its changes' states as :class:`State`
    (a ValueError for one that is not a state)."""
    typed = {**view, "state": State(view["state"])}
    if "history" in view:
        typed["history"] = [{**change, "state": State(change["state"])} for change in view["history"]]
    return typed


def _detail(response: httpx.Response) -> str:
    """The service's words in a refusal: its ``detail`` (a list, as a validation error's ``location: message``
    lines, joined one item a line), else the start of the body."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:2000].strip() or response.reason_phrase
    return "\n".join(str(item) for item in detail) if isinstance(detail, list) else str(detail)


def _spec_data(spec: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    """The spec to send: ``spec`` itself, the content of the spec file it names, or ``{}`` for None."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return spec
    from beamstream.spec_input import parse_yaml, read_spec_text

    path = Path(spec)
    data = parse_yaml(read_spec_text(path), str(path))
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with keys source, steps, serializer, sinks; "
                        f"got {type(data).__name__}")
    return data
