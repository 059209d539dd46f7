"""What a receiver sends back to a producer, one frame each (docs/wire-format.md).

- ``beamstream-kept INDEX``: the receiver (buffer or client) has data message ``INDEX``
  (ASCII digits) of this producer; the producer may forget it.
- ``beamstream-ack``: the end-of-stream message arrived.
- ``beamstream-refused: WHY``: a buffer could not accept a message, and says why.
- ``beamstream-released GENERATION``: over shared memory (:mod:`beamstream.wire.slots`), nothing reads the
  slot of that generation any more; the producer may reuse it.

A pub producer also receives its subscribers' (un)subscriptions (``\\x01``/``\\x00`` + topic)
on the same socket; :func:`parse_reply` names those too.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from beamstream.errors import WireFormatError

ACK = b"beamstream-ack"
REFUSED = b"beamstream-refused: "
KEPT = b"beamstream-kept "
RELEASED = b"beamstream-released "
MAX_INDEX_DIGITS = 19  # an index is a non-negative int64


def kept(index: int) -> bytes:
    """The frame that tells a push producer its data message ``index`` arrived."""
    return KEPT + str(index).encode()


def released(generation: int) -> bytes:
    """The frame that tells a producer its shared-memory slot ``generation`` is no longer read."""
    return RELEASED + str(generation).encode()


def refused(reason: str) -> bytes:
    """The frame that tells a producer its message was refused, and why."""
    return REFUSED + reason.encode()


class Reply(NamedTuple):
    """A parsed reply: ``kind`` and, for ``kept``, the index (for ``released``, the slot's generation); for
    ``refused``, the reason."""

    kind: Literal["kept", "released", "ack", "refused", "subscribe", "unsubscribe"]
    index: int = -1
    reason: str = ""


def parse_reply(frame: bytes) -> Reply:
    """The reply ``frame`` holds; WireFormatError naming it if it is none of the above."""
    if frame == ACK:
        return Reply("ack")
    for prefix, kind in ((KEPT, "kept"), (RELEASED, "released")):
        if frame.startswith(prefix):
            digits = frame[len(prefix):]
            if not digits.isdigit() or len(digits) > MAX_INDEX_DIGITS:
                raise WireFormatError(f"malformed {kind} reply {frame[:64]!r}: expected {prefix.decode()}NUMBER")
            return Reply(kind, index=int(digits))
    if frame.startswith(REFUSED):
        return Reply("refused", reason=frame[len(REFUSED):].decode(errors="replace"))
    if frame[:1] == b"\x01":
        return Reply("subscribe")
    if frame[:1] == b"\x00":
        return Reply("unsubscribe")
    raise WireFormatError(f"unknown reply {frame[:64]!r}")
