"""beamstream: stream X-ray facility data from sources through processing steps to consumers."""

from typing import Any

from beamstream.client import Client, Event, Message, StreamReport
from beamstream.errors import BeamstreamError, ServiceError
from beamstream.protocol.states import State

__all__ = ["BeamstreamError", "Client", "Event", "Message", "Service", "ServiceError", "State", "Stream",
           "StreamReport"]


def __getattr__(name: str) -> Any:
    """``Service`` and ``Stream`` (:mod:`beamstream.remote`), imported on first use: httpx stays out of the CLI's
    start-up."""
    if name in ("Service", "Stream"):
        import beamstream.remote

        return getattr(beamstream.remote, name)
    raise AttributeError(f"module 'beamstream' has no attribute {name!r}")
