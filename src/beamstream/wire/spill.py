"""The local buffer's spill on disk: segment files of records, and one index per sealed segment.

A segment ``seg-{first offset:012d}.bss`` is a sequence of records::

    b"BSR1" | offset: u64 | kind: u8 (0 data, 1 end) | frame count: u32 | frame lengths: u64 × count
          | frames | xxh3-64 of the frames: u64          (all little-endian)

A sealed segment has an index ``seg-{first offset:012d}.idx`` next to it::

    b"BSI1" | segment size: u64 | record count: u32
          | per record: offset: u64 | position: u64 | kind: u8 | frame count: u32 | frame lengths: u64 × count
                      | the record's first frame (frame lengths[0] bytes; none if the count is 0)
          | xxh3-64 of everything before it: u64              (all little-endian)

The first frame is the buffer's message header (a few hundred bytes), so the indexes alone
rebuild the stream's account after a restart.

Written and read by :class:`beamstream.buffer.segments.Segments`; docs/buffer-protocol.md says
when segments are written, sealed, trusted and deleted.
"""

from __future__ import annotations

import struct

MAGIC = b"BSR1"
HEAD = struct.Struct("<4sQBI")
TAIL = struct.Struct("<Q")
INDEX_MAGIC = b"BSI1"
INDEX_HEAD = struct.Struct("<4sQI")
INDEX_ENTRY = struct.Struct("<QQBI")
KINDS = {"data": 0, "end": 1}
KIND_NAMES = {code: name for name, code in KINDS.items()}
