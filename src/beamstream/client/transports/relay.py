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

import functools
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

    Raises OptionError for a ``tls`` that is not three items, a certificate without its key, or a file that cannot
    be used (naming it: missing, unreadable, not PEM, a key that is not the certificate's).
    """
    from beamstream.errors import OptionError

    if not isinstance(tls, (tuple, list)) or len(tls) != 3:
        raise OptionError(f"tls=(cert, key, ca) takes three paths (or None), not {tls!r}")
    cert, key, ca = tls
    if (cert is None) != (key is None):
        raise OptionError("tls=(cert, key, ca): give the client certificate and its key together")
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise OptionError(f"the CA certificate {ca} cannot be used: {_file_problem(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
                raise OptionError(f"the key {key} is not the key of the certificate {cert}: give the key that was "
                                  "made with it") from None
            raise OptionError(f"the certificate {cert} and its key {key} cannot be used: {_file_problem(exc)}") \
                from None
    return context


def _file_problem(exc: OSError) -> str:
    """What ``exc``, from loading a PEM file into an SSL context, says is wrong with it, in words."""
    if isinstance(exc, ssl.SSLError):
        return f"not PEM, or not what it should hold ({exc.reason or exc})"
    return exc.strerror or str(exc)


ALERTS_ON_OUR_CERTIFICATE = {  # the service's TLS alert about the certificate we presented: what is wrong
    "CERTIFICATE_REVOKED": "it is revoked", "CERTIFICATE_EXPIRED": "it has expired",
    "UNKNOWN_CA": "it is not signed by the CA the service trusts (is it from another CA?)",
    "BAD_CERTIFICATE": "it is not one the service accepts", "UNSUPPORTED_CERTIFICATE": "it is not for TLS clients",
    "CERTIFICATE_UNKNOWN": "it is not one the service accepts",
}
NOT_SIGNED_BY_CA = {2, 18, 19, 20, 21}  # OpenSSL's X509_V_ERR_* codes for a chain that does not reach a trusted CA


def tls_refusal(exc: BaseException, tls: TLSFiles | None) -> str | None:
    """Why TLS refused the connection that failed with ``exc`` (an ``ssl.SSLError`` found in its causes), as one
    sentence that names the file concerned among ``tls`` (``(cert, key, ca)``, as for :func:`client_tls_context`;
    None: none given) and says what to do; None when no TLS error caused ``exc``.

    Either side may refuse: this client, when the service's certificate does not chain to ``ca`` (or to the
    system's CAs) or fails another check; the service, whose TLS alert says why (no certificate, one revoked,
    expired or from another CA); and a plain-HTTP service answers a TLS handshake with bytes that are no TLS.
    """
    error = _ssl_error(exc)
    if error is None:
        return None
    cert, _, ca = tls if tls is not None else (None, None, None)
    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code in NOT_SIGNED_BY_CA:
            trusted = f"the CA in {ca}" if ca is not None else "a CA this system trusts"
            return (f"the service's certificate is not signed by {trusted} ({error.verify_message}): give the CA "
                    "certificate of the service's facility (ca=, or ca: in the profile)")
        return f"the service's certificate failed verification: {error.verify_message}"
    reason = error.reason or ""
    alert = reason.split("_ALERT_", 1)[1] if "_ALERT_" in reason else None
    named = f"TLS alert {alert.lower().replace('_', ' ')!r}" if alert else None
    if alert == "CERTIFICATE_REQUIRED":
        return (f"the service wants a client certificate and we presented none ({named}): give your certificate and "
                "key (cert= and key=, or cert: and key: in the profile)")
    if alert in ALERTS_ON_OUR_CERTIFICATE and cert is not None:
        return (f"the service refused our certificate {cert}: {ALERTS_ON_OUR_CERTIFICATE[alert]} ({named}); ask "
                "the facility's CA for a new one")
    if alert is not None:
        return f"the service refused the TLS connection ({named})"
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return "https:// to a service that does not speak TLS: is it served over plain http://?"
    return f"TLS failed: {error}"


def _ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The first ``ssl.SSLError`` among ``exc`` and its causes and contexts, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


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
    service with mutual TLS (``https://`` only: :func:`client_tls_context`); ``token`` a bearer token
    of the service, sent in the ``Authorization`` header of the opening handshake.
    """

    def __init__(self, url: str, *, group: str, lossy: bool, start: Literal["earliest", "now"], credit: int,
                 max_message: int, tls: TLSFiles | None = None, admission: AdmissionKey | None = None,
                 token: str | None = None) -> None:
        super().__init__(WebSocketCarrier(url, max_message=max_message, queue=credit + CONTROL_SLACK, tls=tls,
                                          token=token),
                         group=group, lossy=lossy, start=start, credit=credit, admission=admission)
