"""The wire format, defined once: every message beamstream's processes exchange or store.

- :mod:`~beamstream.wire.messages`: data and end-of-stream messages (producer → receiver).
- :mod:`~beamstream.wire.replies`: what a receiver sends back to a producer (kept, ack, refused).
- :mod:`~beamstream.wire.control`: the local buffer ↔ consumer protocol, and the stream's verdict.
- :mod:`~beamstream.wire.nats`: how a message is laid out in NATS JetStream (subjects, headers).
- :mod:`~beamstream.wire.spill`: the buffer's segment and index files on disk.
- :mod:`~beamstream.wire.schema`: the JSON Schema of all of the above (``python -m beamstream.wire.schema``).

docs/wire-format.md, docs/buffer-protocol.md and docs/nats-backend.md describe them for
people; tests/test_wire_schema.py fails when they and this package drift apart.
"""

from beamstream.wire.frames import frame_buffer, frame_bytes, payload_checksum
from beamstream.wire.messages import (
    WIRE_VERSION,
    DataHeader,
    DataMessage,
    EndMessage,
    FieldInfo,
    message_from_batch,
    parse_header,
    parse_message,
)

__all__ = [
    "WIRE_VERSION", "DataHeader", "DataMessage", "EndMessage", "FieldInfo", "frame_buffer", "frame_bytes",
    "message_from_batch", "parse_header", "parse_message", "payload_checksum",
]
