"""What a receiver sends back to a producer, one frame each (docs/wire-format.md).

- ``beamstream-kept INDEX``: the receiver (buffer or client) has data message ``INDEX``
  (ASCII digits) of this producer; the producer may forget it. Over shared memory the receiver adds
  `` SESSION``, 16 hex digits it drew when it started, so that the producer knows who holds the slot.
- ``beamstream-ack``: the end-of-stream message arrived.
- ``beamstream-refused: WHY``: a buffer could not accept a message, and says why.
- ``beamstream-released GENERATION``: over shared memory (:mod:`beamstream.wire.slots`), nothing reads the
  slot of that generation any more; the producer may reuse it.

A pub producer also receives its subscribers' (un)subscriptions (``\\x01``/``\\x00`` + topic)
on the same socket; :func:`parse_reply` names those too.
"""

from __future__ import annotations

import secrets
from typing import Literal, NamedTuple

from beamstream.errors import WireFormatError

ACK = b"beamstream-ack"
REFUSED = b"beamstream-refused: "
KEPT = b"beamstream-kept "
RELEASED = b"beamstream-released "
MAX_INDEX_DIGITS = 19  # an index is a non-negative int64
SESSION_DIGITS = 16


def new_session() -> str:
    """A receiver's session: 16 random hex digits, drawn once when it starts reading over shared memory."""
    return secrets.token_hex(SESSION_DIGITS // 2)


def _is_hex(text: bytes) -> bool:
    return all(c in b"0123456789abcdef" for c in text)


def kept(index: int, session: str = "") -> bytes:
    """The frame that tells a push producer its data message ``index`` arrived (at the receiver ``session``)."""
    return KEPT + str(index).encode() + (b" " + session.encode() if session else b"")


def released(generation: int) -> bytes:
    """The frame that tells a producer its shared-memory slot ``generation`` is no longer read."""
    return RELEASED + str(generation).encode()


def refused(reason: str) -> bytes:
    """The frame that tells a producer its message was refused, and why."""
    return REFUSED + reason.encode()


class Reply(NamedTuple):
    """A parsed reply: ``kind`` and, for ``kept``, the index and the receiver's session (if it gave one; for
    ``released``, the slot's generation); for ``refused``, the reason."""

    kind: Literal["kept", "released", "ack", "refused", "subscribe", "unsubscribe"]
    index: int = -1
    reason: str = ""
    session: str = ""


def parse_reply(frame: bytes) -> Reply:
    """The reply ``frame`` holds; WireFormatError naming it if it is none of the above."""
    if frame == ACK:
        return Reply("ack")
    for prefix, kind in ((KEPT, "kept"), (RELEASED, "released")):
        if frame.startswith(prefix):
            digits, _, session = frame[len(prefix):].partition(b" ")
            if not digits.isdigit() or len(digits) > MAX_INDEX_DIGITS or (session and (
                    kind != "kept" or len(session) != SESSION_DIGITS or not _is_hex(session))):
                raise WireFormatError(f"malformed {kind} reply {frame[:64]!r}: expected {prefix.decode()}NUMBER"
                                      + (" [SESSION]" if kind == "kept" else ""))
            return Reply(kind, index=int(digits), session=session.decode())
    if frame.startswith(REFUSED):
        return Reply("refused", reason=frame[len(REFUSED):].decode(errors="replace"))
    if frame[:1] == b"\x01":
        return Reply("subscribe")
    if frame[:1] == b"\x00":
        return Reply("unsubscribe")
    raise WireFormatError(f"unknown reply {frame[:64]!r}")
