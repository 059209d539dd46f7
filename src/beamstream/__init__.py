"""beamstream: stream X-ray facility data from sources through processing steps to consumers."""

from typing import Any

from beamstream.client import Client, Event, Message, StreamReport
from beamstream.errors import BeamstreamError

__all__ = ["BeamstreamError", "Client", "Event", "Message", "Service", "StreamReport"]


def __getattr__(name: str) -> Any:
    """``Service`` (:mod:`beamstream.remote`), imported on first use: httpx stays out of the CLI's start-up."""
    if name == "Service":
        from beamstream.remote import Service

        return Service
    raise AttributeError(f"module 'beamstream' has no attribute {name!r}")
