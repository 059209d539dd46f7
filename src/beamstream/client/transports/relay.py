"""Reading a stream through the request service's relay, for a reader that reaches only the service (docs/relay.md).

``Client("http://SERVICE/v1/streams/ID", group=NAME)`` opens a WebSocket to
``ws://SERVICE/v1/streams/ID/relay`` (``wss://`` for ``https://``); the service pipes it to a
ZeroMQ DEALER connected to the stream's buffer, and this client speaks the buffer's own
consumer protocol over it (:class:`~beamstream.client.transports.group.GroupMember`).

Framing, both ways: one binary WebSocket message per ZeroMQ multipart message
(:mod:`beamstream.wire.relay`, which the service's relay speaks too). TLS: the one client context
(:mod:`beamstream.security.tls_context`).
"""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING, Any, Literal

from beamstream.client.transports.base import DEFAULT_HWM, Options, refusal
from beamstream.client.transports.group import GROUP_SCOPE, Carrier, GroupMember, member_options
from beamstream.errors import OptionError, TransportError, WireFormatError
from beamstream.security.tls_context import TLSFiles, client_tls_context, tls_refusal
from beamstream.transport import DEFAULT_MAX_MESSAGE
from beamstream.wire.relay import join_frames, split_frames

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey, StreamKey

OPEN_TIMEOUT_S = 10.0  # for the WebSocket's opening handshake
CONTROL_SLACK = 16  # messages beyond its credit a member may be sent unasked (describe, end, error, rejoin)


def relay_url(url: str) -> str:
    """The relay's WebSocket URL for stream URL ``http(s)://SERVICE/v1/streams/ID``."""
    scheme, rest = url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}/relay"


class WebSocketCarrier(Carrier):
    """A WebSocket to the relay of stream ``url``; messages up to ``max_message`` bytes, no compression.

    Up to ``queue`` received messages wait for the application; more than the buffer ever sends
    unasked should be allowed (its credit and a few control messages), so the connection's
    background thread always reads and answers the service's keepalive pings, however long the
    application takes over one message.

    A connection that cannot be opened raises TransportError at once; one the relay closes
    (no such stream, a stream that has ended or never ran, the service stopping) raises
    TransportError with the relay's reason at the next send or receive.
    """

    def __init__(self, url: str, *, max_message: int, queue: int, tls: TLSFiles | None = None,
                 token: str | None = None) -> None:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        address = relay_url(url)
        self.where = f"the service's relay at {address}"
        options: dict[str, Any] = {}
        if tls is not None:
            options["ssl"] = client_tls_context(tls)
            options["ssl"].sslsocket_class = _AlertKeepingSocket
        if token is not None:  # a header, not ?token=: nothing on the way logs it with the URL
            options["additional_headers"] = {"Authorization": f"Bearer {token}"}
        try:
            self.connection = connect(address, max_size=max_message, max_queue=queue, compression=None, legacy=True,
                                      open_timeout=OPEN_TIMEOUT_S, create_connection=_telling_connection(), **options)
        except InvalidStatus as exc:
            detail = _detail(exc.response.body)
            raise TransportError(f"{address} answered HTTP {exc.response.status_code} instead of a WebSocket"
                                 + (f": {detail}" if detail else f": is {url} a stream of a beamstream service "
                                                                 "(http://SERVICE/v1/streams/ID)?")) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            refused = tls_refusal(exc, tls)
            raise TransportError(f"TLS with {address} failed: {refused}" if refused is not None
                                 else f"cannot connect to {address}: {exc}") from None

    def send(self, frame: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self.connection.send(join_frames([frame]))
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    def receive(self, wait_s: float) -> list[Any] | None:
        from websockets.exceptions import ConnectionClosed

        try:
            message = self.connection.recv(timeout=wait_s)
        except TimeoutError:
            return None
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        if isinstance(message, str):
            raise WireFormatError(f"{self.where} sent a text message; the relay sends binary ones")
        return split_frames(message)

    def _closed(self, exc: Any) -> TransportError:
        """The error for connection closed ``exc`` (websockets' ConnectionClosed): the relay's reason and code."""
        close = exc.rcvd or exc.sent
        if close is None:
            return TransportError(f"{self.where}: the connection was lost")
        why = f"{close.reason} (code {close.code})" if close.reason else f"code {close.code}"
        return TransportError(f"{self.where} closed the connection: {why}")

    def close(self) -> None:
        self.connection.close()


def _detail(body: bytes | None) -> str | None:
    """The ``detail`` of a service's JSON answer ``body`` (the service's own words), or None."""
    import json

    try:
        detail = json.loads(body or b"")["detail"]
    except (ValueError, KeyError, TypeError):
        return None
    return detail if isinstance(detail, str) else None


class _AlertKeepingSocket(ssl.SSLSocket):
    """An SSL socket that keeps the first TLS error its reads raised (``failure``: e.g. the service's alert). The
    websockets client reads in a thread of its own, and of the errors of both its threads keeps only the first,
    which may be its writer's "EOF" after the reader got the alert that says why."""

    failure: ssl.SSLError | None = None

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self.failure = self.failure or exc
            raise


@functools.cache
def _telling_connection() -> type:
    """websockets' ClientConnection, but an opening handshake that failed after a TLS error raises that error (its
    socket's :attr:`_AlertKeepingSocket.failure`), not just "no valid HTTP response" or "no close frame"."""
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import ClientConnection

    class TellingConnection(ClientConnection):
        def handshake(self, *args: Any, **kwargs: Any) -> None:
            try:
                super().handshake(*args, **kwargs)
            except WebSocketException as exc:
                failure = getattr(self.socket, "failure", None)
                if failure is not None:
                    raise failure from exc
                raise

    return TellingConnection


class RelayTransport(GroupMember):
    """A member of ``group`` of stream ``url`` (``http(s)://SERVICE/v1/streams/ID``) through the service's relay.

    As :class:`~beamstream.client.transports.group.GroupTransport`, with ``credit`` the
    messages the buffer may hand this member before it acknowledges one, and ``max_message``
    the largest relay message (a whole message, all its frames) taken; ``tls`` the files of a
    service with mutual TLS (``https://`` only: :func:`~beamstream.security.tls_context.client_tls_context`);
    ``token`` a bearer token of the service, sent in the ``Authorization`` header of the opening handshake.
    """

    takes = frozenset({"group", "hwm", "lossy", "start", "max_message", "tls", "token"})
    scope = GROUP_SCOPE
    scopes = {"tls": "to https:// streams of a request service (read through its relay)",
              "token": "to https:// streams of a request service (a token must not cross a network in clear)"}
    refuses = {"endpoints": "a relay reads one stream", "bind": "the service connects the relay to the buffer",
               "pattern": "every group gets every message",
               "redeliver_after": "the buffer notices a departed member itself"}

    def __init__(self, url: str, *, group: str, lossy: bool = False, start: Literal["earliest", "now"] = "earliest",
                 credit: int = DEFAULT_HWM, max_message: int = DEFAULT_MAX_MESSAGE, tls: TLSFiles | None = None,
                 admission: AdmissionKey | None = None, token: str | None = None) -> None:
        super().__init__(WebSocketCarrier(url, max_message=max_message, queue=credit + CONTROL_SLACK, tls=tls,
                                          token=token),
                         group=group, lossy=lossy, start=start, credit=credit, admission=admission)

    @classmethod
    def from_options(cls, endpoints: list[str], options: Options, key: StreamKey | None) -> RelayTransport:
        """Refuses ``tls`` and ``token`` for an ``http://`` stream, and a reader without a group."""
        for option in ("tls", "token"):
            if option in options and not endpoints[0].startswith("https://"):
                raise refusal(option, cls.scopes[option], endpoints, options)
        if "group" not in options:
            raise OptionError(f"{endpoints[0]} is read through the service's relay as a member of a consumer group: "
                              "give group=...")
        return cls(endpoints[0], **member_options(options, key))
