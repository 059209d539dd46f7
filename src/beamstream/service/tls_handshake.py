"""How the request service makes each TLS handshake itself, so that a refused one names its cause on both sides.

- :func:`handshaking` makes a uvicorn HTTP protocol class that makes its connection's handshake with the service's
  context (``loop.start_tls``), then hands the TLS transport to the protocol.
- The peer of a refused handshake gets the TLS alert OpenSSL wrote for it (:class:`RefusingContext`: asyncio alone
  drops it and just closes the connection), or, to a plain-HTTP request on the HTTPS port, an HTTP 400 saying to
  use https:// (:data:`PLAIN_HTTP_ANSWER`).
- The service logs each refusal with its reason (:func:`refusal_reason`) and the peer's address at WARNING
  (:class:`Refusals`: once per reason per address per minute, the next line counting those left out). A
  connection closed, or silent, before its handshake ended is no refusal: it is logged at DEBUG.

The contexts are made by :class:`beamstream.service.tls.ServerTLS`, as :class:`RefusingContext`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


PLAIN_HTTP_DETAIL = b'{"detail": "http:// to an https:// service: use https:// with the same host and port"}'
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(PLAIN_HTTP_DETAIL), PLAIN_HTTP_DETAIL))


@dataclass
class Handshake:
    """One connection's TLS handshake as its SSL object saw it: ``refused``, the error it was refused with."""

    refused: ssl.SSLError | None = None


_HANDSHAKE: ContextVar[Handshake | None] = ContextVar("beamstream_tls_handshake", default=None)


class _RefusingSSLObject(ssl.SSLObject):
    """A server's SSL object whose refusal of a handshake reaches the peer before the connection closes.

    When OpenSSL refuses a handshake it writes a TLS alert saying why (certificate required, unknown CA,
    certificate expired or revoked), but asyncio closes the connection at once without sending it. So the
    refusal is kept (and told to the :class:`Handshake` this object was made for) and the call says it wants
    more input: asyncio then sends what is pending (the alert; or, to a plain-HTTP request, which has no TLS
    to carry an alert, :data:`PLAIN_HTTP_ANSWER`) and waits for the peer. Its next bytes make the next call
    raise the refusal; its closing the connection (what a peer told of the refusal does) ends the handshake
    too. asyncio's handshake timeout bounds a peer that does neither.
    """

    outgoing: ssl.MemoryBIO  # set by RefusingContext.wrap_bio
    handshake: Handshake | None = None
    refused: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self.refused is not None:
            raise self.refused
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            self.refused = exc
            if self.handshake is not None:
                self.handshake.refused = exc
            if exc.reason == "HTTP_REQUEST":
                self.outgoing.write(PLAIN_HTTP_ANSWER)
            raise ssl.SSLWantReadError("refused; the refusal goes to the peer first") from None


class RefusingContext(ssl.SSLContext):
    """The service's SSL context: its SSL objects send their refusals (:class:`_RefusingSSLObject`) and tell them
    to the :class:`Handshake` of the task that started their connection's handshake (:func:`handshaking`)."""

    sslobject_class = _RefusingSSLObject

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        ssl_object = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        ssl_object.outgoing, ssl_object.handshake = outgoing, _HANDSHAKE.get()
        return ssl_object


VERIFY_REASONS = {  # OpenSSL's X509_V_ERR_* codes: what is wrong with a client certificate
    **dict.fromkeys((2, 18, 19, 20, 21), "its certificate is not signed by the CA in tls_ca"),
    9: "its certificate is not valid yet", 10: "its certificate has expired",
    23: "its certificate is revoked (tls_crl)", 3: "tls_crl holds no revocation list of its certificate's CA",
    12: "the revocation list in tls_crl has expired",
    26: "its certificate is not for TLS clients (no clientAuth in its extended key usage)",
}


def refusal_reason(exc: BaseException) -> str | None:
    """Why a client's handshake failed with ``exc``, in words (a TLS alert the client sent is named as such); None
    when the TLS layer refused nothing (the connection closed or timed out before its handshake ended)."""
    if not isinstance(exc, ssl.SSLError):
        return None
    if isinstance(exc, ssl.SSLCertVerificationError):
        return VERIFY_REASONS.get(exc.verify_code, f"its certificate failed verification: {exc.verify_message}")
    reason = exc.reason or ""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "it presented no client certificate"
    if reason in ("HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):
        return "it spoke plain HTTP to the HTTPS port (an http:// URL)"
    if "_ALERT_" in reason:
        alert = reason.split("_ALERT_", 1)[1].lower().replace("_", " ")
        return f"it refused the service's certificate or the connection: it sent the TLS alert {alert!r}"
    if reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"):
        return "it does not speak TLS 1.3, the only version the service speaks"
    return f"{reason or type(exc).__name__}: {exc}"


class Refusals:
    """The service's log of refused TLS handshakes: each at WARNING, with the peer's address and the reason, at most
    once per ``every_s`` seconds for the same address and reason; the next line logged for them says how many
    were left out. Remembers at most ``most`` of them (the oldest are forgotten first)."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic, most: int = 10_000) -> None:
        self.every_s, self.clock, self.most = every_s, clock, most
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # (address, reason): (logged at, left out since)

    def report(self, address: str, reason: str) -> bool:
        """Log the refusal of ``address``'s handshake for ``reason``, unless logged less than ``every_s`` ago;
        whether it was logged."""
        now = self.clock()
        key = (address, reason)
        logged_at, left_out = self._logged.get(key, (None, 0))
        if logged_at is not None and now - logged_at < self.every_s:
            self._logged[key] = (logged_at, left_out + 1)
            return False
        self._logged.pop(key, None)
        while len(self._logged) >= self.most:
            del self._logged[next(iter(self._logged))]
        self._logged[key] = (now, 0)
        more = f" ({left_out} more since, not logged)" if left_out else ""
        logger.warning("refused a TLS connection from %s: %s%s", address, reason, more)
        return True


def handshaking(protocol_class: type, context: ssl.SSLContext, refusals: Refusals) -> type:
    """A subclass of the uvicorn HTTP protocol class ``protocol_class`` that serves its connection over TLS: it
    makes the handshake itself with ``context`` (``loop.start_tls``, so that it knows the peer and the outcome,
    which a server made with ``ssl=`` keeps to itself), then hands the TLS transport to ``protocol_class``.

    A refused handshake is reported to ``refusals`` with its reason (:func:`refusal_reason`; the refusal itself
    went to the peer: :class:`_RefusingSSLObject`), one that ended otherwise is logged at DEBUG; either way
    ``protocol_class`` never sees the connection. What the TLS transport delivers before ``protocol_class`` has
    it (data sent right behind the handshake, its end, its loss) is handed over in order once it has.
    """
    class Handshaking(protocol_class):  # type: ignore[misc, valid-type]
        __doc__ = handshaking.__doc__
        _pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None  # None: protocol_class has it
        _handshake_task: asyncio.Task | None = None  # kept: the loop keeps only a weak reference to a task

        def connection_made(self, transport: Any) -> None:
            transport.pause_reading()  # the ClientHello waits in the socket for start_tls
            self._pending = []
            self._handshake_task = asyncio.get_running_loop().create_task(self._secure(transport))

        async def _secure(self, plain: Any) -> None:
            address = (plain.get_extra_info("peername") or ("?",))[0]
            handshake = Handshake()
            _HANDSHAKE.set(handshake)  # this task's context, which start_tls's SSL object is made in
            try:
                secured = await asyncio.get_running_loop().start_tls(plain, self, context, server_side=True)
            except OSError as exc:  # start_tls closed the connection
                reason = refusal_reason(handshake.refused or exc)
                if reason is None:
                    logger.debug("TLS connection from %s ended before its handshake did: %s", address, exc)
                else:
                    refusals.report(address, reason)
                return
            pending, self._pending = self._pending, None
            protocol_class.connection_made(self, secured)
            for method, args in pending:
                method(self, *args)

        def data_received(self, data: bytes) -> None:
            if self._pending is None:
                protocol_class.data_received(self, data)
            else:
                self._pending.append((protocol_class.data_received, (data,)))

        def eof_received(self) -> bool | None:
            if self._pending is None:
                return protocol_class.eof_received(self)
            self._pending.append((protocol_class.eof_received, ()))
            return None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._pending is None:
                protocol_class.connection_lost(self, exc)
            else:  # handed over with the rest; after a refused handshake, never
                self._pending.append((protocol_class.connection_lost, (exc,)))

    Handshaking.__name__ = Handshaking.__qualname__ = f"Handshaking{protocol_class.__name__}"
    return Handshaking
