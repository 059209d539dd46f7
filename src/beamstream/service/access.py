"""What a caller may do: one decision per route, made here, from the service's policy
(:class:`~beamstream.service.policy.Authorizer`, each decision logged) and, when a token said who is asking, its
limits (:class:`~beamstream.service.tokens.Grant`) together — as scopes do in Tiled.

A route that acts on a stream declares its :class:`Action` (``Depends(stream_for(Action.SEE))``); someone else's
stream (unless the caller is an admin; for the owner-only actions, admins included) and one outside a token's limits
are answered exactly as an unknown stream, so that their existence is not revealed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

from fastapi import Depends

from beamstream.protocol.models import StreamRequest, TokenRequest
from beamstream.service.catalogue import Run
from beamstream.service.context import Context, ServiceContext
from beamstream.service.job_paths import PathGrant
from beamstream.service.principal import Caller, Principal
from beamstream.service.problems import NotAllowed, NotFound, unknown_stream
from beamstream.service.store import StreamNotFound, StreamRecord

logger = logging.getLogger(__name__)


class Action(Enum):
    """What a route does to a stream: its words (in logs and refusals), and whether only the stream's owner may
    do it (its credentials and its output files: not even an admin)."""

    SEE = ("see", False)
    CANCEL = ("cancel", False)
    FOLLOW = ("follow the events of", False)
    READ_LOGS = ("read the logs of", False)
    RELAY = ("relay", False)
    MINT_TOKEN_FOR = ("mint a token for", False)
    FETCH_CREDENTIALS = ("fetch the credentials of", True)
    LIST_FILES = ("list the files of", True)
    FETCH_FILE = ("fetch a file of", True)

    def __init__(self, words: str, owner_only: bool) -> None:
        self.words = words
        self.owner_only = owner_only


@dataclass(frozen=True)
class Listing:
    """Which streams a caller's list shows: ``owner`` (None: anyone's), and a token's limits."""

    owner: str | None
    ids: list[str] | None
    experiments: list[str] | None


def stream(context: ServiceContext, principal: Principal, stream_id: str, action: Action) -> StreamRecord:
    """The stream ``stream_id`` if ``principal`` may do ``action`` to it; else the unknown stream's 404."""
    authorizer, identity = context.authorizer, principal.identity
    try:
        if action.owner_only:
            record = authorizer.owned_stream(context.store, stream_id, identity, action=action.words)
        else:
            record = authorizer.visible_stream(context.store, stream_id, identity, action=action.words)
    except StreamNotFound:
        raise unknown_stream(stream_id) from None
    grant = principal.grant
    if grant is not None and not grant.permits_stream(record.id, record.experiment):
        logger.warning("refused %s to %s stream %s: outside the limits of token %s", identity, action.words,
                       record.id, grant.id)
        raise unknown_stream(record.id)
    return record


def stream_for(action: Action) -> Any:
    """The dependency of a route that does ``action`` to the stream of its ``stream_id`` path parameter: the
    stream's record, if the caller may."""
    def allowed(stream_id: str, principal: Caller, context: Context) -> StreamRecord:
        return stream(context, principal, stream_id, action)

    return Depends(allowed)


def check_request(context: ServiceContext, principal: Principal, request: StreamRequest) -> None:
    """NotAllowed unless ``principal`` may request ``request``: a token limited to a stream may request none, one
    limited to experiments only theirs; the policy decides which experiments, and whose data (a simulated source
    and a catalogue run of the request's experiment are everyone's who may read it)."""
    grant = principal.grant
    if grant is not None and (grant.stream is not None or not grant.permits_experiment(request.experiment)):
        raise NotAllowed("this token may not request this stream: it is limited to "
                         + (f"stream {grant.stream}" if grant.stream else f"experiments {', '.join(grant.experiments)}"))
    own_data = request.source.get("type") != "simulated" and not request.from_catalogue
    decision = context.authorizer.may_request(principal.identity, request.experiment, own_data=own_data)
    if not decision.allowed:
        raise NotAllowed(decision.told)


def path_grant(context: ServiceContext, principal: Principal, experiment: str | None, run: Run | None) -> PathGrant:
    """What a request of ``principal`` for ``experiment`` (``run``: the catalogue run it reads) may make jobs
    open: any path (the policy's choice), or the run's files and the experiment's calibration folder."""
    if context.authorizer.may_open_any_path(principal.identity).allowed:
        return PathGrant(any_path=True)
    folder = context.catalogue.calibration_folder(experiment) if experiment is not None else None
    files = frozenset([*run.files, *([run.dir] if run.dir else [])]) if run is not None else frozenset()
    if folder is None and not files:
        return PathGrant(any_path=False)
    named = [f"the files of run {run.run} of experiment {experiment!r} that the service finds"] if run else []
    named += [f"files under the calibration folder of experiment {experiment!r}, {folder}/"] if folder else []
    return PathGrant(any_path=False, files=files, folders=(os.path.realpath(folder),) if folder else (),
                     where=" or ".join(named))


def check_experiment(context: ServiceContext, principal: Principal, experiment: str) -> None:
    """NotFound (as for an experiment the catalogue does not know) unless ``principal`` may read ``experiment``'s
    runs."""
    grant = principal.grant
    if (grant is not None and not grant.permits_experiment(experiment)
            or not context.authorizer.may_read_experiment(principal.identity, experiment).allowed):
        raise NotFound(f"no experiment {experiment!r} you may read")


def listing(context: ServiceContext, principal: Principal, owner: str | None) -> Listing | None:
    """Which streams ``principal`` sees when it lists those of ``owner`` (None: all it may see): its own, an
    admin's anyone's, within a token's limits; None if it may see none of them."""
    authorizer, identity = context.authorizer, principal.identity
    if not authorizer.may_list(identity, owner).allowed:
        return None
    if owner is None and not authorizer.is_admin(identity):
        owner = identity
    grant = principal.grant
    return Listing(owner=owner, ids=None if grant is None or grant.stream is None else [grant.stream],
                   experiments=None if grant is None or grant.experiments is None else list(grant.experiments))


def check_mint(context: ServiceContext, principal: Principal, request: TokenRequest) -> None:
    """NotAllowed unless ``principal`` may mint the token ``request`` asks for: with its client certificate (a
    token cannot mint tokens; without TLS there are none), for experiments it may read and a stream it may see."""
    if principal.grant is not None:
        raise NotAllowed("a token cannot mint tokens: present your client certificate")
    if not context.settings.tls:
        raise NotAllowed("tokens are minted only with TLS on, for a caller with a client certificate")
    for experiment in request.experiments or []:
        if not context.authorizer.may_read_experiment(principal.identity, experiment).allowed:
            raise NotAllowed(f"you may not read experiment {experiment!r}")
    if request.stream is not None:
        stream(context, principal, request.stream, Action.MINT_TOKEN_FOR)


def may_revoke(context: ServiceContext, principal: Principal, token_identity: str) -> bool:
    """Whether ``principal`` may revoke a token of ``token_identity``: its own; an admin anyone's."""
    return token_identity == principal.identity or context.authorizer.is_admin(principal.identity)

