"""``/v1/tokens``: mint a short-lived bearer token, revoke one (:mod:`beamstream.service.tokens`)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParameter

from beamstream.protocol.models import Problem, TokenRequest, TokenView
from beamstream.service.access import check_mint, may_revoke
from beamstream.service.context import Context
from beamstream.service.principal import Caller
from beamstream.service.problems import NotFound
from beamstream.service.tokens import digest, new_secret

logger = logging.getLogger("beamstream.service.tokens")
router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenView,
             responses={403: {"model": Problem}, 404: {"model": Problem}})
def mint_token(request: TokenRequest, principal: Caller, context: Context) -> TokenView:
    """A short-lived bearer token that acts as the caller, limited to ``experiments`` and ``stream`` if given,
    for ``ttl_s`` seconds; only for a caller with a client certificate (TLS on): a token cannot mint tokens.
    The token is shown this once; the service keeps only its SHA-256."""
    check_mint(context, principal, request)
    secret = new_secret()
    grant = context.store.add_token(digest=digest(secret), identity=principal.identity,
                                    expires=context.clock() + request.ttl_s, experiments=request.experiments,
                                    stream=request.stream, certificate=principal.certificate)
    logger.info("issued token %s to %s (expires in %d s, experiments %s, stream %s)", grant.id, principal,
                request.ttl_s, request.experiments or "all", request.stream or "any")
    return TokenView(token=secret, id=grant.id, expires=grant.expires, experiments=request.experiments,
                     stream=grant.stream)


@router.delete("/{token_id}", status_code=204, responses={404: {"model": Problem}})
def revoke_token(token_id: Annotated[str, PathParameter(max_length=64)], principal: Caller, context: Context) -> None:
    """Revoke a token (the caller's own; an admin: anyone's); 404 for an unknown token or someone else's."""
    found = context.store.token(token_id)
    if found is None or not may_revoke(context, principal, found.identity):
        raise NotFound(f"no token {token_id!r}")
    context.store.revoke_token(token_id)
    logger.info("%s revoked token %s (of %s)", principal, token_id, found.identity)
