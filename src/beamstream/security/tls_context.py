"""The TLS context of a client of a service with mutual TLS, and why TLS refused a connection, in words.

One builder for every client of the request service (docs/security.md, Mutual TLS): the service client
(:class:`~beamstream.service_client.ServiceClient`), the relay's reader
(:class:`~beamstream.client.transports.relay.RelayTransport`) and a job calling its service back
(:mod:`beamstream.service.callbacks`). Standard library only: a job needs no extra.
"""

from __future__ import annotations

import ssl

from beamstream.errors import OptionError

TLSFiles = tuple  # (cert, key, ca): paths (str or Path) or None; see client_tls_context


def client_tls_context(tls: TLSFiles) -> ssl.SSLContext:
    """The SSL context of a client of a service with mutual TLS: ``tls`` is ``(cert, key, ca)``, the client
    certificate and its key (PEM; both or neither) and the CA certificate that verifies the service (None: the
    system's trusted CAs). TLS 1.2 at least, host names checked.

    Raises OptionError for a ``tls`` that is not three items, a certificate without its key, or a file that cannot
    be used (naming it: missing, unreadable, not PEM, a key that is not the certificate's).
    """
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
