"""What the request service's routes work with, made once per application: its settings, its job store, the
decisions of its policy, its catalogue, the verifier of its jobs' reports, its streams' live rates, and — once it
runs jobs — its dispatcher. Routes receive them through dependencies (:func:`context_of`), never through globals."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends
from fastapi.requests import HTTPConnection

from beamstream.service.callbacks import Verifier
from beamstream.service.catalogue import Catalogue
from beamstream.service.live_rates import LiveRates
from beamstream.service.policy import Authorizer
from beamstream.service.revocation import Revocations
from beamstream.service.settings import ServiceSettings
from beamstream.service.store import JobStore

if TYPE_CHECKING:
    from beamstream.service.dispatcher import Dispatcher

MAX_FOLLOWED = 256  # streams whose events or logs are followed at once (each holds a connection and polls)


@dataclass
class ServiceContext:
    """The collaborators of one application (see the module's description). ``dispatcher`` is None until the
    application's lifespan starts one (:func:`beamstream.service.app.create_app` with a ``service_url``): an
    application without one takes requests but runs nothing, as tests of the API alone want."""

    settings: ServiceSettings
    store: JobStore
    authorizer: Authorizer
    catalogue: Catalogue
    revocations: Revocations
    verifier: Verifier = field(default_factory=Verifier)
    live: LiveRates = field(default_factory=LiveRates)
    dispatcher: Dispatcher | None = None
    followed: int = 0  # streams whose events or logs are followed now (at most MAX_FOLLOWED)
    relays: int = 0  # readers relayed now
    relay_context: Any = None  # the relay's zmq.asyncio.Context, while the application's lifespan runs
    clock: Callable[[], float] = time.time  # now, in seconds since the epoch: when tokens expire

    @classmethod
    def of(cls, settings: ServiceSettings, store: JobStore) -> ServiceContext:
        """The context of a service with ``settings`` over ``store``. PolicyError for a policy file that is not
        valid."""
        return cls(settings=settings, store=store, authorizer=Authorizer(settings.policy_file),
                   catalogue=Catalogue(settings.xtc_root, settings.hdf5_pattern, settings.calib_pattern),
                   revocations=Revocations(settings.tls_crl))

    @property
    def executors(self) -> set[str]:
        """The executors this service runs jobs with."""
        return set(self.settings.executors) | {self.settings.executor}

    def check_resources(self, resources: dict[str, Any]) -> None:
        """CannotRun if a stream asking for ``resources`` could not run (nothing to check without a dispatcher)."""
        if self.dispatcher is not None:
            self.dispatcher.check_resources(resources)

    def wake(self) -> None:
        """Let the dispatcher act on a change now (a new request, a job's report), if there is one."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def stop_jobs(self, stream_id: str) -> None:
        """Stop the stream's jobs, its buffer last, if a dispatcher runs them."""
        if self.dispatcher is not None:
            self.dispatcher.stop_jobs(stream_id, buffer_last=True)


def context_of(connection: HTTPConnection) -> ServiceContext:
    """The context of the application serving ``connection`` (a dependency of every route)."""
    return connection.app.state.context


Context = Annotated[ServiceContext, Depends(context_of)]
