"""Reading a stream through the request service's relay, for a reader that reaches only the service (docs/relay.md).

``Client("http://SERVICE/v1/streams/ID", group=NAME)`` opens a WebSocket to
``ws://SERVICE/v1/streams/ID/relay`` (``wss://`` for ``https://``); the service pipes it to a
ZeroMQ DEALER connected to the stream's buffer, and this client speaks the buffer's own
consumer protocol over it (:class:`~beamstream.client.transports.group.GroupMember`).

Framing, both ways: one binary WebSocket message per ZeroMQ multipart message, laid out as the
frame count (uint32, little-endian), each frame's length (uint64, little-endian), then the
frames back to back (:func:`join_frames`, :func:`split_frames`).
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from beamstream.client.transports.group import Carrier, GroupMember
from beamstream.errors import TransportError, WireFormatError
from beamstream.wire.frames import frame_buffer

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey

COUNT = struct.Struct("<I")
LENGTH_BYTES = 8
OPEN_TIMEOUT_S = 10.0  # for the WebSocket's opening handshake
CONTROL_SLACK = 16  # messages beyond its credit a member may be sent unasked (describe, end, error, rejoin)


def join_frames(frames: Sequence[Any]) -> bytes:
    """The relay message carrying ``frames`` (bytes, memoryviews or ``zmq.Frame``s), in order."""
    buffers = [frame_buffer(frame) for frame in frames]
    lengths = [memoryview(buffer).nbytes for buffer in buffers]
    return b"".join([COUNT.pack(len(lengths)), struct.pack(f"<{len(lengths)}Q", *lengths), *buffers])


def split_frames(message: bytes) -> list[memoryview]:
    """The frames of relay ``message``, as read-only views of it (no copy).

    Raises WireFormatError for a message that is not one: no frame, a length table longer than
    the message, or lengths that do not add up to exactly the bytes that follow it.
    """
    view = memoryview(message).toreadonly()
    if len(view) < COUNT.size:
        raise WireFormatError(f"relay message of {len(view)} bytes has no frame count")
    (count,) = COUNT.unpack_from(view)
    start = COUNT.size + LENGTH_BYTES * count
    if count == 0 or start > len(view):
        raise WireFormatError(f"relay message of {len(view)} bytes cannot hold {count} frames")
    lengths = struct.unpack_from(f"<{count}Q", view, COUNT.size)
    if sum(lengths) != len(view) - start:
        raise WireFormatError(f"relay message: its {count} frames add up to {sum(lengths)} bytes, "
                              f"{len(view) - start} follow the length table")
    frames = []
    for length in lengths:
        frames.append(view[start:start + length])
        start += length
    return frames


TLSFiles = tuple  # (cert, key, ca): paths (str or Path) or None; see client_tls_context


def client_tls_context(tls: TLSFiles) -> ssl.SSLContext:
    """The SSL context of a client of a service with mutual TLS: ``tls`` is ``(cert, key, ca)``, the client
    certificate and its key (PEM; both or neither) and the CA certificate that verifies the service (None: the
    system's trusted CAs). TLS 1.2 at least, host names checked.

    Raises OptionError for a ``tls`` that is not three items, or a certificate without its key.
    """
    from beamstream.errors import OptionError

    if not isinstance(tls, (tuple, list)) or len(tls) != 3:
        raise OptionError(f"tls=(cert, key, ca) takes three paths (or None), not {tls!r}")
    cert, key, ca = tls
    if (cert is None) != (key is None):
        raise OptionError("tls=(cert, key, ca): give the client certificate and its key together")
    context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


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
        options: dict[str, Any] = {} if tls is None else {"ssl": client_tls_context(tls)}
        if token is not None:  # a header, not ?token=: nothing on the way logs it with the URL
            options["additional_headers"] = {"Authorization": f"Bearer {token}"}
        try:
            self.connection = connect(address, max_size=max_message, max_queue=queue, compression=None, legacy=True,
                                      open_timeout=OPEN_TIMEOUT_S, **options)
        except InvalidStatus as exc:
            raise TransportError(f"{address} answered HTTP {exc.response.status_code} instead of a WebSocket: is "
                                 f"{url} a stream of a beamstream service (http://SERVICE/v1/streams/ID)?") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise TransportError(f"cannot connect to {address}: {exc}") from None

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


class RelayTransport(GroupMember):
    """A member of ``group`` of stream ``url`` (``http(s)://SERVICE/v1/streams/ID``) through the service's relay.

    As :class:`~beamstream.client.transports.group.GroupTransport`, with ``credit`` the
    messages the buffer may hand this member before it acknowledges one, and ``max_message``
    the largest relay message (a whole message, all its frames) taken; ``tls`` the files of a
    service with mutual TLS (``https://`` only: :func:`client_tls_context`); ``token`` a bearer token
    of the service, sent in the ``Authorization`` header of the opening handshake.
    """

    def __init__(self, url: str, *, group: str, lossy: bool, start: Literal["earliest", "now"], credit: int,
                 max_message: int, tls: TLSFiles | None = None, admission: AdmissionKey | None = None,
                 token: str | None = None) -> None:
        super().__init__(WebSocketCarrier(url, max_message=max_message, queue=credit + CONTROL_SLACK, tls=tls,
                                          token=token),
                         group=group, lossy=lossy, start=start, credit=credit, admission=admission)
