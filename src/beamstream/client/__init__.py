"""Consume streams: ``Client`` yields messages or events and accounts for every event."""

from beamstream.accounting import StreamReport
from beamstream.client.reader import Client, Event, Message

__all__ = ["Client", "Event", "Message", "StreamReport"]
