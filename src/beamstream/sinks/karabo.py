"""``karabo``: each producer serves its events as Karabo bridge trains itself, to ``karabo_bridge.Client`` (REQ).

The producer-side twin of ``beamstream bridge karabo`` (:mod:`beamstream.bridges.karabo`, docs/karabo-bridge.md):
the same protocol (2.2), the same naming of trains, sources and keys, the same serving (each event once, in order,
to the next request; a request whose client has gone is passed over and its train goes to the next). Where the
bridge reads a stream and sends it on, this sink sends each message's arrays as the producer made them: no second
process, no second trip through the kernel, no checksum checked again, so on a busy node it is the cheaper way to
feed Karabo tools from a source; the bridge is the way to feed them from a stream that already runs (a buffer's
group, the service's relay).

What the Karabo protocol lacks, this sink lacks: no sealing (a sealed stream, ``--key-file``, is refused), no
accounting for a client that dies while its train is being sent (REQ has no acknowledgement: that train is lost
to it, as with Karabo's own bridge), no end of stream (clients stop asking, or time out). A producer whose train
no client asks for within ``request_timeout_s`` fails, saying so; trains sent get up to ``linger_s`` to leave
when the producer ends.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from beamstream.bridges.karabo import KaraboBridge, TrainEncoder
from beamstream.client.reader import Message
from beamstream.codecs import decode_payload
from beamstream.errors import TransportError
from beamstream.stages import SinkContext, SinkSpec
from beamstream.transport import rank_endpoint, shared, spec_endpoint
from beamstream.wire import DataMessage, EndMessage
from beamstream.wire.metadata import RunMetadata


class KaraboSink(SinkSpec):
    """Serve every event as a Karabo bridge train (protocol 2.2) to REQ clients, from each producer.

    Attributes:
        endpoint: tcp://HOST:PORT (or ipc://PATH) that each producer binds and Karabo clients connect to; producer
            r binds PORT+r (ipc: PATH-r).
        source: the Karabo source of every field (default: per field, the detector the stream's description names,
            else "beamstream").
        request_timeout_s: how long a train waits for a client to ask for it before the producer fails. Default 300.
        linger_s: how long the trains sent may take to leave once the producer ends. Default 10.
    """

    type: Literal["karabo"] = "karabo"
    endpoint: str
    source: str | None = Field(None, min_length=1)
    request_timeout_s: float = Field(300.0, gt=0)
    linger_s: float = Field(10.0, ge=0)

    @property
    def checksummed(self) -> bool:
        return False  # a Karabo train carries no checksum: the producer need not compute one

    @property
    def sealable(self) -> bool:
        return False  # a Karabo train has no room for a seal

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, endpoint: str) -> str:
        spec_endpoint(endpoint)
        if shared(endpoint) or endpoint.startswith("inproc://"):
            raise ValueError(f"{endpoint}: Karabo clients connect from their own process over ZeroMQ: give a tcp:// "
                             "(or ipc://) endpoint")
        if endpoint.startswith("tcp://") and urlsplit(endpoint).port == 0:
            raise ValueError(f"{endpoint}: give the port Karabo clients are told (producer r binds PORT+r), not 0")
        return endpoint

    def open(self, context: SinkContext) -> KaraboSender:
        """Producer ``context.rank``'s server, bound; TransportError for a sealed stream or an endpoint in use."""
        if context.key is not None:
            raise TransportError("the karabo sink serves trains in the Karabo bridge protocol, which has no sealing, "
                                 "and this stream is sealed: produce without --key-file, or serve a buffer's "
                                 "group with `beamstream bridge karabo --key-file`")
        return KaraboSender(self, rank_endpoint(self.endpoint, context.rank))


class KaraboSender:
    """One producer's Karabo bridge server: ``send`` returns once every event of the message has gone to a client."""

    def __init__(self, spec: KaraboSink, endpoint: str) -> None:
        self.spec = spec
        self.bridge = KaraboBridge(endpoint, source=spec.source, wait_s=spec.request_timeout_s)
        self.metadata: RunMetadata | None = None
        self.encoder = TrainEncoder(lambda: self.metadata, spec.source)

    def send(self, message: DataMessage) -> None:
        if message.metadata is not None and self.metadata is None:
            self.metadata = message.metadata  # the first message carries the stream's description
        for event in Message(message, decode_payload(message), 0.0).events():
            self.bridge.serve_event(event, self.encoder)

    def close(self, end: EndMessage) -> None:
        self.bridge.close(self.spec.linger_s)
