"""Control messages between the buffer and its consumers (docs/buffer-protocol.md).

A consumer's DEALER talks to the buffer's consumer ROUTER. Every control message is one
msgpack frame whose ``op`` says what it is; a delivery is that frame followed by the
producer's original message frames, unchanged.

consumer → buffer: ``hello`` {group, lossy, start, credit}, ``ack`` {offsets, credit}
buffer → consumer: ``deliver`` {offset, skipped} + message frames, ``end`` {complete, summary, missing},
``ping``, ``rejoin`` (the buffer does not know this consumer: send ``hello`` again), ``error`` {reason}
"""

from __future__ import annotations

from typing import Any

import msgpack

from beamstream.errors import WireFormatError

PROTOCOL = "beamstream-buffer/1"


def pack(op: str, **fields: Any) -> bytes:
    return msgpack.packb({"op": op, "protocol": PROTOCOL, **fields})


def unpack(frame: Any) -> dict[str, Any]:
    """A control message; WireFormatError saying what is wrong with anything else."""
    try:
        message = msgpack.unpackb(frame.buffer if hasattr(frame, "buffer") else frame)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireFormatError(f"control message is not msgpack: {exc}") from None
    if not isinstance(message, dict) or "op" not in message:
        raise WireFormatError("control message has no 'op'")
    if message.get("protocol") != PROTOCOL:
        raise WireFormatError(f"control message speaks {message.get('protocol')!r}, this buffer speaks {PROTOCOL!r}")
    return message
