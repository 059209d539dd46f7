"""What a receiver sends back to a producer, one frame each (docs/wire-format.md).

- ``beamstream-kept INDEX``: the receiver (buffer or client) has data message ``INDEX``
  (ASCII digits) of this producer; the producer may forget it.
- ``beamstream-ack``: the end-of-stream message arrived.
- ``beamstream-refused: WHY``: a buffer could not accept a message, and says why.

A pub producer also receives its subscribers' (un)subscriptions (``\\x01``/``\\x00`` + topic)
on the same socket; :func:`parse_reply` names those too.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from beamstream.errors import WireFormatError

ACK = b"beamstream-ack"
REFUSED = b"beamstream-refused: "
KEPT = b"beamstream-kept "
MAX_INDEX_DIGITS = 19  # an index is a non-negative int64


def kept(index: int) -> bytes:
    """The frame that tells a push producer its data message ``index`` arrived."""
    return KEPT + str(index).encode()


def refused(reason: str) -> bytes:
    """The frame that tells a producer its message was refused, and why."""
    return REFUSED + reason.encode()


class Reply(NamedTuple):
    """A parsed reply: ``kind`` and, for ``kept``, the index; for ``refused``, the reason."""

    kind: Literal["kept", "ack", "refused", "subscribe", "unsubscribe"]
    index: int = -1
    reason: str = ""


def parse_reply(frame: bytes) -> Reply:
    """The reply ``frame`` holds; WireFormatError naming it if it is none of the above."""
    if frame == ACK:
        return Reply("ack")
    if frame.startswith(KEPT):
        digits = frame[len(KEPT):]
        if not digits.isdigit() or len(digits) > MAX_INDEX_DIGITS:
            raise WireFormatError(f"malformed kept reply {frame[:64]!r}: expected {KEPT.decode()}INDEX")
        return Reply("kept", index=int(digits))
    if frame.startswith(REFUSED):
        return Reply("refused", reason=frame[len(REFUSED):].decode(errors="replace"))
    if frame[:1] == b"\x01":
        return Reply("subscribe")
    if frame[:1] == b"\x00":
        return Reply("unsubscribe")
    raise WireFormatError(f"unknown reply {frame[:64]!r}")
