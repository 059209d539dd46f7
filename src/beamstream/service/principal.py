"""Who is asking: the one place that says so (authentication), for every route and the relay's WebSocket.

An authentication layer (:mod:`beamstream.service.tls`, which verifies the TLS peer certificate) puts the identity
it verified in the ASGI scope under :data:`IDENTITY_KEY`, and its certificate's serial number under
:data:`CERTIFICATE_KEY`; nothing a client sends (a header, a body, a query) can set them. Without such a layer, the
first-run default, every request is made for the settings' ``default_owner``. With TLS on that default never
applies: a connection without an identity is refused, 401 (a WebSocket: closed with code 4401).

Without a certificate's identity, a bearer token (``Authorization: Bearer TOKEN``; on what a browser opens without
headers, the relay's WebSocket and a stream's events, also ``?token=``) names it: the :class:`Principal` then
carries the token's :class:`~beamstream.service.tokens.Grant`, whose limits :mod:`beamstream.service.access`
applies. A token presented but not valid (unknown, expired, revoked, or minted with a certificate since revoked)
is 401.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, WebSocketException
from fastapi.requests import HTTPConnection

from beamstream.service.context import context_of
from beamstream.service.problems import NotAuthenticated
from beamstream.service.tokens import Grant, bearer, grant_of

logger = logging.getLogger(__name__)
IDENTITY_KEY = "beamstream.identity"  # the ASGI scope key an authentication layer puts the verified identity in
CERTIFICATE_KEY = "beamstream.certificate"  # and the serial number (hex) of the certificate that proved it


@dataclass(frozen=True)
class Principal:
    """Who is asking: ``identity``; the token's ``grant`` when a token said so (None: a client certificate, or the
    default owner); the serial number (hex) of the client certificate that said so (``certificate``)."""

    identity: str
    grant: Grant | None = None
    certificate: str | None = None

    def __str__(self) -> str:
        return self.identity


def authenticate(connection: HTTPConnection) -> Principal:
    """The :class:`Principal` of an HTTP request or a WebSocket (see the module's description)."""
    found = connection.scope.get(IDENTITY_KEY)
    if found:
        return Principal(found, certificate=connection.scope.get(CERTIFICATE_KEY))
    context = context_of(connection)
    websocket = connection.scope["type"] == "websocket"
    token = bearer(connection.headers.get("authorization"))
    if token is None and (websocket or connection.url.path.endswith("/events")):  # WebSocket, EventSource: no headers
        token = connection.query_params.get("token")
        if token is not None:  # out of the scope once read: what logs the path with its query must not log it
            kept = [(name, value) for name, value in connection.query_params.multi_items() if name != "token"]
            connection.scope["query_string"] = urlencode(kept).encode()
    if token is not None:
        grant = grant_of(context.store, token, context.clock())
        if grant is None:
            _refuse(websocket, "the bearer token is not valid (unknown, expired or revoked)")
        if grant.certificate is not None and context.revocations.revoked(grant.certificate):
            logger.warning("refused token %s of %s: the certificate it was minted with (serial %s) is revoked",
                           grant.id, grant.identity, grant.certificate)
            _refuse(websocket, "the bearer token is not valid: the certificate it was minted with is revoked")
        return Principal(grant.identity, grant)
    if context.settings.tls:
        _refuse(websocket, "no identity: no client certificate naming one (its subject common name), and no bearer "
                           "token")
    return Principal(context.settings.default_owner)


def _refuse(websocket: bool, why: str) -> None:
    if websocket:
        raise WebSocketException(4401, why)
    raise NotAuthenticated(why)


Caller = Annotated[Principal, Depends(authenticate)]
