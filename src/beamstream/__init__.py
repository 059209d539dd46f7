"""beamstream: stream X-ray facility data from sources through processing steps to consumers."""

from typing import Any

from beamstream.client import Client, Event, Message, StreamReport
from beamstream.errors import BeamstreamError, ServiceError
from beamstream.protocol.states import State

__all__ = ["BeamstreamError", "Client", "Event", "Message", "Service", "ServiceClient", "ServiceError", "State",
           "Stream", "StreamReport"]


def __getattr__(name: str) -> Any:
    """``ServiceClient`` and ``Stream`` (:mod:`beamstream.service_client`), imported on first use: httpx stays out
    of the CLI's start-up. ``Service`` is ``ServiceClient`` under its former name (no warning: kept)."""
    if name in ("Service", "ServiceClient", "Stream"):
        import beamstream.service_client

        return getattr(beamstream.service_client, "ServiceClient" if name == "Service" else name)
    raise AttributeError(f"module 'beamstream' has no attribute {name!r}")
