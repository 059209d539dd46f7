"""What a buffer's members get over an ``shm://`` consumer endpoint: slot references instead of payloads.

A message whose payload lies in its producer's shared memory goes out as its header and the reference to that slot,
under the buffer's name for the producer's arena (:class:`~beamstream.buffer.base.Lease`). Any other message (read
back from the spill, or from ipc:// or tcp:// producers) is copied into a slot of the buffer's own arena, lent to
the member until it acknowledges the message or leaves.
"""

from __future__ import annotations

from typing import Any

from beamstream.buffer.message_log import Entry
from beamstream.shared_memory import Arena, ArenaFull
from beamstream.wire.slots import encode_ref


class SlotLender:
    """The buffer's own arena of ``shm_bytes`` (made when first needed) and the slots it has lent to members."""

    def __init__(self, shm_bytes: int) -> None:
        self.shm_bytes = shm_bytes
        self.arena: Arena | None = None
        self.lent: dict[tuple[bytes, int], int] = {}  # (member, offset) → generation of the slot it holds

    def frames_for(self, identity: bytes, entry: Entry) -> list[Any] | None:
        """The frames after the control frame that the member ``identity`` gets for ``entry``: its header and a slot
        reference; None while the buffer's own arena has no room for a message not in shared memory."""
        if entry.lease is not None:
            return [entry.frames[0], entry.lease.ref]
        if self.arena is None:
            self.arena = Arena(self.shm_bytes)
        try:
            ref = self.arena.put(entry.frames[1:])
        except ArenaFull:
            return None
        self.lent[(identity, entry.offset)] = ref.generation
        return [entry.frames[0], encode_ref(ref)]

    def take_back(self, identity: bytes, offset: int) -> None:
        """The slot lent to member ``identity`` for message ``offset``, if any, is the buffer's again."""
        generation = self.lent.pop((identity, offset), None)
        if generation is not None:
            self.arena.release(generation)

    def forget(self, identity: bytes) -> None:
        """Member ``identity`` is gone: every slot lent to it comes back."""
        for held_by, offset in [lent for lent in self.lent if lent[0] == identity]:
            self.take_back(held_by, offset)

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
