"""beamstream: stream X-ray facility data from sources through processing steps to consumers."""

from beamstream.client import Client, Event, Message, StreamReport
from beamstream.errors import BeamstreamError

__all__ = ["BeamstreamError", "Client", "Event", "Message", "StreamReport"]
