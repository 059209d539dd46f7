"""Which transport reads an endpoint: a registry of URL schemes, and the options each transport takes.

``Client(endpoint, **options)`` reads through :func:`open_transport`: the endpoint's scheme picks the
transport (for ``tcp://``, ``ipc://`` and ``inproc://``, ``group=`` picks between reading producers directly
and reading a buffer's consumer group); an option that transport does not take (:attr:`Transport.takes`) is
refused, naming where it applies (the scopes of the transports that take it); the transport checks the rest
itself (:meth:`Transport.from_options`).

    tcp://, ipc://, inproc://   DirectTransport, or with group=... GroupTransport
    shm://                      SharedMemoryTransport (producers on this node, payloads in shared memory), or with
                                group=... GroupTransport (a buffer on this node that lends its slots)
    http://, https://           RelayTransport (a request service's stream, through its relay)
    nats://                     NatsTransport
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from beamstream.client.transports.base import Options, Transport, refusal
from beamstream.client.transports.direct import DirectTransport
from beamstream.client.transports.group import GroupTransport
from beamstream.client.transports.nats import NatsTransport
from beamstream.client.transports.relay import RelayTransport
from beamstream.client.transports.shared import SharedMemoryTransport
from beamstream.errors import OptionError, TransportError

if TYPE_CHECKING:
    from beamstream.security.streamkey import StreamKey

SCHEMES: dict[str, tuple[type[Transport], type[Transport]]] = {}
"""scheme → (the transport that reads it, the one that reads it with ``group=...``)."""

NOT_GIVEN = {"bind": False, "pattern": "pull", "lossy": False, "copy": False}
"""Options that, at these values (or None, for any option), count as not given."""


def register(scheme: str, transport: type[Transport], grouped: type[Transport] | None = None) -> None:
    """Read ``scheme://`` endpoints with ``transport``, or with ``grouped`` when ``group=...`` is given."""
    SCHEMES[scheme] = (transport, grouped or transport)


for _scheme in ("tcp", "ipc", "inproc"):
    register(_scheme, DirectTransport, GroupTransport)
register("shm", SharedMemoryTransport, GroupTransport)
register("http", RelayTransport)
register("https", RelayTransport)
register("nats", NatsTransport)


def open_transport(endpoints: str | Sequence[str], options: dict[str, Any], key: StreamKey | None) -> Transport:
    """The transport reading ``endpoints`` with ``options`` (:class:`Options`); ``key``: the stream's key.

    TypeError for a name that is no option; OptionError for no endpoint, or an option given where it does not
    apply; TransportError for an endpoint no transport reads.
    """
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not endpoints:
        raise OptionError("Client needs an endpoint to read")
    unknown = sorted(set(options) - set(Options.__annotations__))
    if unknown:
        raise TypeError(f"Client() got an unexpected keyword argument {unknown[0]!r}; its transport options are "
                        f"{', '.join(Options.__annotations__)}")
    given = cast(Options, {name: value for name, value in options.items()
                           if value is not None and value != NOT_GIVEN.get(name)})
    transport = transport_for(endpoints[0], grouped="group" in given)
    for option in [*given, *(["endpoints"] if len(endpoints) > 1 else [])]:
        if option not in transport.takes:
            raise refusal(option, scope(option), endpoints, given, transport.refuses.get(option))
    return transport.from_options(endpoints, given, key)


def transport_for(endpoint: str, *, grouped: bool) -> type[Transport]:
    """The transport that reads ``endpoint`` (as a group member if ``grouped``); TransportError if none does."""
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
    if scheme not in SCHEMES:
        raise TransportError(f"{endpoint!r}: a Client reads " + ", ".join(f"{known}://" for known in SCHEMES)
                             + " endpoints")
    return SCHEMES[scheme][grouped]


def scope(option: str) -> str:
    """Where ``option`` applies: the scopes of the registered transports that take it, in order, each once."""
    scopes: list[str] = []
    for transport in dict.fromkeys(transport for pair in SCHEMES.values() for transport in pair):
        if option in transport.takes and transport.scopes.get(option, transport.scope) not in scopes:
            scopes.append(transport.scopes.get(option, transport.scope))
    return scopes[0] if len(scopes) == 1 else f"{', '.join(scopes[:-1])} or {scopes[-1]}"
