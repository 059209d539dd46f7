"""Mutual TLS for the request service: the server's SSL context and the identity of each connection (docs/security.md).

What this module promises, with the settings ``tls_cert``, ``tls_key``, ``tls_ca`` (and ``tls_crl``) given:

- :class:`ServerTLS` makes the context ``beamstream service`` serves with: TLS 1.3 only, a client
  certificate required and verified against ``tls_ca`` (a handshake without one, or with one from
  another CA, expired, or revoked, fails: the connection never reaches the application), and no
  session tickets, so every connection is a full handshake whose certificate is verified again.
  With ``client_cert="optional"`` (the setting ``tls_client_cert``) a client may present no
  certificate (it is then identified by a bearer token, or refused 401 by the API); one it
  presents is verified exactly as when required.
- Revocation (``tls_crl``, OpenSSL's ``VERIFY_CRL_CHECK_LEAF``) is checked on every connection
  against the CRL file as it is when the connection starts: at each handshake (in the context's
  SNI callback, which OpenSSL calls on every ClientHello, with or without a server name) the
  file's inode, modification time and size are compared with those of the copy loaded; when
  they changed, a new context is made from the files and the handshake (and every later one)
  switches to it. A CRL that cannot be read or loaded leaves the last good one in force and is
  logged at ERROR once per change.
- :func:`identifying` makes a uvicorn protocol class (HTTP or WebSocket) whose connections put
  the verified client certificate's subject common name into every ASGI scope they make, under
  :data:`~beamstream.service.principal.IDENTITY_KEY` (its serial number under ``CERTIFICATE_KEY``, so that a token
  minted with it dies with it); the peer certificate is read from the TLS
  transport once, when the connection is made (after its handshake). A certificate with no
  common name, or more than one, gives no identity (the API then answers 401). Nothing a client
  sends can set the key: it is written, or removed, in every scope.
- Every refused handshake names its cause on both sides, where TLS lets it
  (:mod:`beamstream.service.tls_handshake`, which :func:`uvicorn_options` uses): the peer
  gets the TLS alert OpenSSL wrote for it (asyncio alone drops it and just closes the connection), or, to a
  plain-HTTP request on the HTTPS port, an HTTP 400 saying to use https://; the service logs the refusal
  with its reason and the peer's address at WARNING (:class:`Refusals`: once per reason per address per
  minute, the next line counting those left out). A connection closed, or silent, before its handshake
  ended is no refusal: it is logged at DEBUG.
- A TLS file the service cannot use stops it at start with :class:`TLSFileError`, one line naming the
  setting and the file and what is wrong: missing or unreadable, not PEM, or a key that is not the
  certificate's. So does a ``tls_cert`` whose subject alternative names do not name the host of the URL jobs
  and users reach the service at (``public_url``): their clients would refuse it (:func:`names_host`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from beamstream.service.principal import CERTIFICATE_KEY, IDENTITY_KEY
from beamstream.service.tls_handshake import Refusals, RefusingContext, handshaking

logger = logging.getLogger(__name__)


class TLSFileError(Exception):
    """A TLS file that cannot be used; the message is one line naming the setting, the file and what is wrong."""


def _unreadable(setting: str, path: Path) -> str | None:
    """Why the file of ``setting`` cannot be read (missing, a folder, no permission), or None."""
    try:
        Path(path).read_bytes()
    except OSError as exc:
        return f"{setting} {path}: {exc.strerror or exc}"
    return None


def load_pair(context: ssl.SSLContext, cert: tuple[str, Path], key: tuple[str, Path]) -> None:
    """Load a certificate and its key, each ``(setting, path)``, into ``context``; TLSFileError saying which file is
    wrong and how: missing or unreadable, not a PEM certificate or an unencrypted PEM key, or a key that is not the
    certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        context.load_cert_chain(cert[1], key[1])
        return
    except (ssl.SSLError, OSError) as exc:
        failure = exc
    for setting, path in (cert, key):
        if (why := _unreadable(setting, path)) is not None:
            raise TLSFileError(why)
    try:
        x509.load_pem_x509_certificate(Path(cert[1]).read_bytes())
    except ValueError:
        raise TLSFileError(f"{cert[0]} {cert[1]} holds no PEM certificate") from None
    try:
        load_pem_private_key(Path(key[1]).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:  # TypeError: encrypted
        raise TLSFileError(f"{key[0]} {key[1]} holds no unencrypted PEM private key ({exc})") from None
    if getattr(failure, "reason", None) == "KEY_VALUES_MISMATCH":
        raise TLSFileError(f"{key[0]} {key[1]} is not the key of {cert[0]} {cert[1]}: give the key that was made "
                           "with that certificate")
    raise TLSFileError(f"{cert[0]} {cert[1]} with {key[0]} {key[1]}: {failure}")


def load_certificates(context: ssl.SSLContext, setting: str, path: Path) -> None:
    """Load the CA certificates or revocation list of ``setting`` from ``path`` into ``context``; TLSFileError
    saying what is wrong."""
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        why = _unreadable(setting, path)
        raise TLSFileError(why or f"{setting} {path} holds no PEM certificate or revocation list ({exc})") from None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """The file's inode, modification time and size (None if it cannot be looked at): a change means a new file."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


class ServerTLS:
    """The service's TLS: ``context`` is the SSL context to serve with (uvicorn's ``ssl_context_factory``).

    ``cert``/``key``: the service's certificate (with its chain) and key; ``ca``: the CA certificate(s) that
    client certificates must chain to; ``crl``: the revocation list (PEM) checked on every connection, re-read
    when the file changes (None: revocation is not checked). Raises TLSFileError, naming the setting and the
    file, when a file cannot be loaded at start.
    """

    def __init__(self, cert: Path, key: Path, ca: Path, crl: Path | None = None,
                 client_cert: str = "required") -> None:
        if client_cert not in ("required", "optional"):
            raise ValueError(f"client_cert must be 'required' or 'optional', not {client_cert!r}")
        self.client_cert = client_cert
        self.cert, self.key, self.ca, self.crl = Path(cert), Path(key), Path(ca), None if crl is None else Path(crl)
        self._stamp = None if self.crl is None else _stamp(self.crl)
        self._failed: tuple[int, int, int] | None = None  # the stamp of a CRL that could not be loaded
        self.current = self._make()
        self.context = self._make()
        self.context.sni_callback = self._switch

    def _make(self) -> ssl.SSLContext:
        context = RefusingContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        # optional: a certificate presented is verified exactly as when required (a bad one fails the handshake);
        # a client without one gets through, with no identity (the API then wants a bearer token, else 401)
        context.verify_mode = ssl.CERT_REQUIRED if self.client_cert == "required" else ssl.CERT_OPTIONAL
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0  # no resumption: a resumed session would skip the certificate's checks
        load_pair(context, ("tls_cert", self.cert), ("tls_key", self.key))
        load_certificates(context, "tls_ca", self.ca)
        if self.crl is not None:
            load_certificates(context, "tls_crl", self.crl)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return context

    def refresh(self) -> None:
        """Load the CRL again if its file changed since it was loaded (else nothing): later handshakes use it."""
        if self.crl is None:
            return
        stamp = _stamp(self.crl)
        if stamp == self._stamp or stamp == self._failed:
            return
        try:
            self.current = self._make()
        except TLSFileError as exc:
            self._failed = stamp
            logger.error("the revocation list %s could not be loaded; the last good one stays in force: %s",
                         self.crl, exc)
            return
        self._stamp, self._failed = stamp, None
        logger.info("revocation list %s loaded again (it changed)", self.crl)

    def _switch(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        """The SNI callback, at every ClientHello: verify this handshake with the context of the current CRL."""
        try:
            self.refresh()
            ssl_object.context = self.current
        except Exception:  # never let a surprise here pass a handshake unchecked: the base context checks too
            logger.exception("could not switch to the current TLS context; using the one loaded at start")


def peer_identity(transport: Any) -> tuple[str, str] | None:
    """The subject common name and the serial number (hex) of the verified client certificate of ``transport``;
    None without TLS, without a certificate, or when it has no common name or several."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    certificate = ssl_object.getpeercert() or {}
    names = [value for part in certificate.get("subject", ()) for key, value in part if key == "commonName"]
    return (names[0], certificate["serialNumber"].lower()) if len(names) == 1 and names[0] else None


ASGIApp = Callable[[dict, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


def with_identity(app: ASGIApp, identity: tuple[str, str] | None) -> ASGIApp:
    """``app`` with ``identity`` (a name and its certificate's serial) put into every scope (:data:`IDENTITY_KEY`,
    :data:`CERTIFICATE_KEY`; both removed when None)."""
    async def identified(scope: dict, receive: Any, send: Any) -> None:
        if identity is None:
            scope.pop(IDENTITY_KEY, None)
            scope.pop(CERTIFICATE_KEY, None)
        else:
            scope[IDENTITY_KEY], scope[CERTIFICATE_KEY] = identity
        await app(scope, receive, send)

    return identified


def identifying(protocol_class: type) -> type:
    """A subclass of the uvicorn protocol class ``protocol_class`` (HTTP: h11, httptools; WebSocket: websockets,
    wsproto) that gives every scope of a connection the connection's :func:`peer_identity`.

    Every uvicorn protocol keeps the application as ``self.app`` (set in ``__init__``) and calls it for each
    request or WebSocket it parses after ``connection_made``; the subclass wraps it there. An HTTP connection
    upgraded to a WebSocket hands its transport to the WebSocket protocol's ``connection_made``, which reads
    the same certificate.
    """
    def connection_made(self: Any, transport: Any) -> None:
        protocol_class.connection_made(self, transport)
        self.app = with_identity(self.app, peer_identity(transport))

    return type(f"Identifying{protocol_class.__name__}", (protocol_class,), {"connection_made": connection_made,
                                                                           "__doc__": identifying.__doc__})


def uvicorn_options(tls: ServerTLS) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that serve with ``tls``: HTTP connections that make their TLS handshake
    themselves with its context, logging refusals (:func:`handshaking`, :class:`Refusals`), and protocols that
    identify peers. uvicorn itself is given no SSL context (so its own startup line, not shown, would say
    http://); the connections' scopes say https and wss."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    if AutoWebSocketsProtocol is None:  # pragma: no cover - websockets is a dependency
        raise RuntimeError("the service needs websockets for its relay")
    return {"http": handshaking(identifying(AutoHTTPProtocol), tls.context, Refusals()),
            "ws": identifying(AutoWebSocketsProtocol)}


def client_certificate_usable(cert: tuple[str, Path], key: tuple[str, Path]) -> str | None:
    """Why a certificate and its key, each ``(setting, path)``, cannot be presented as a TLS client certificate
    (a file that cannot be loaded, a key that is not the certificate's: :func:`load_pair`; an extended key usage
    without clientAuth), or None if they can."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key)
    except TLSFileError as exc:
        return str(exc)
    certificate = x509.load_pem_x509_certificate(Path(cert[1]).read_bytes())
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH in usages:
        return None
    return f"{cert[0]} {cert[1]} is not for TLS clients (its extended key usage has no clientAuth)"


def certificate_names(path: Path) -> list[str]:
    """The DNS names and IP addresses a PEM certificate's subject alternative names give (none without them)."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*alternatives.get_values_for_type(x509.DNSName),
            *(str(address) for address in alternatives.get_values_for_type(x509.IPAddress))]


def names_host(names: list[str], host: str) -> bool:
    """Whether a certificate with the subject alternative ``names`` (:func:`certificate_names`) is one for ``host``,
    as TLS clients check it: an IP address equal to one, or a DNS name equal to one (case aside) or matched by a
    ``*.`` wildcard in its first label."""
    address = _address(host.strip("[]"))
    if address is not None:
        return any(_address(name) == address for name in names)
    host = host.lower().rstrip(".")
    return any(name.lower() == host or name.startswith("*.") and "." in host
               and host.split(".", 1)[1] == name[2:].lower() for name in names)


def _address(text: str) -> Any:
    """``text`` as an IP address (``ipaddress``'s), or None if it is not one."""
    import ipaddress

    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
