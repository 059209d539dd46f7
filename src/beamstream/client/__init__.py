"""Consume streams: ``Client`` yields messages or events and accounts for every event."""

from beamstream.client.reader import Client, Event, Message
from beamstream.client.report import StreamReport

__all__ = ["Client", "Event", "Message", "StreamReport"]
