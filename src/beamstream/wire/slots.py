"""Messages whose payload lies in shared memory (``shm://`` endpoints; docs/wire-format.md, "Shared memory").

Over an ``shm://PATH`` endpoint a data message travels as ``[header, ref]``: the header is the usual
:class:`~beamstream.wire.messages.DataHeader`, and ``ref`` (a :class:`SlotRef`) says where its payload frames
lie in its sender's arena, a file in ``/dev/shm`` that the receiver maps read-only. Every frame after the header
(the payload frames, and a sealed message's seal frame) is in the slot, in order, each starting at a multiple of
:data:`ALIGN` bytes. An end message has no payload and travels as usual.

The slot begins with its generation (little-endian uint64), which the ref repeats: a receiver that finds another
number there holds a reference to a slot reused since (refused, never read as data). A receiver answers
``beamstream-released GENERATION`` once nothing reads the slot any more; only then may the
sender reuse it (:func:`~beamstream.wire.replies.released`).
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from beamstream.wire.frames import decode

ALIGN = 64
"""Every frame in a slot starts at a multiple of this many bytes (a cache line; any numpy dtype's alignment)."""

SLOT_HEADER = ALIGN
"""Bytes before a slot's first frame: its generation, then padding."""

ARENA_NAME = re.compile(r"beamstream-shm-[0-9]{1,10}-[0-9a-f]{16}")
"""The file name of an arena in /dev/shm: the producer's process id, then 16 random hex digits."""

MAX_FRAMES = 1026  # a message's fields (wire.messages.MAX_FIELDS), a seal frame, and room for a codec's prefix

Offset = Annotated[int, msgspec.Meta(ge=0, le=1 << 48)]


class SlotRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a data message's payload lies: ``[arena, generation, offset, sizes]`` on the wire.

    ``arena``: the arena's file name in /dev/shm; ``offset``: where the slot begins in it; ``sizes``: the bytes of
    each frame after the header, in order (frame ``i`` begins at the first multiple of :data:`ALIGN` after frame
    ``i-1`` ends, frame 0 at ``offset + SLOT_HEADER``).
    """

    arena: Annotated[str, msgspec.Meta(pattern=f"^{ARENA_NAME.pattern}$")]
    generation: Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]
    offset: Offset
    sizes: Annotated[list[Offset], msgspec.Meta(max_length=MAX_FRAMES)]

    def spans(self) -> list[tuple[int, int]]:
        """``(start, end)`` in the arena of each frame."""
        spans, position = [], self.offset + SLOT_HEADER
        for size in self.sizes:
            spans.append((position, position + size))
            position = aligned(position + size)
        return spans

    @property
    def end(self) -> int:
        """Where the slot ends in the arena (the first byte after it)."""
        return aligned(self.spans()[-1][1]) if self.sizes else self.offset + SLOT_HEADER


def aligned(position: int) -> int:
    """``position`` rounded up to a multiple of :data:`ALIGN`."""
    return -(-position // ALIGN) * ALIGN


def slot_bytes(sizes: list[int]) -> int:
    """Bytes a slot holding frames of ``sizes`` takes in an arena."""
    return SLOT_HEADER + sum(aligned(size) for size in sizes)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SlotRef)


def encode_ref(ref: SlotRef) -> bytes:
    return _encoder.encode(ref)


def parse_ref(frame: object) -> SlotRef:
    """The validated :class:`SlotRef` a frame holds; WireFormatError naming what is wrong."""
    return decode(_decoder, frame, "shared-memory slot reference")
