"""Segment files: the buffer's messages on disk, for replay and for surviving a restart.

A segment ``seg-{first offset:012d}.bss`` is a sequence of records::

    b"BSR1" | offset: u64 | kind: u8 (0 data, 1 end) | frame count: u32 | frame lengths: u64 × count
          | frames | xxh3-64 of the frames: u64          (all little-endian)

Records are appended as messages arrive (written through, before any consumer sees them).
On opening, every segment is scanned; a torn record at the end of the last segment (the
buffer was killed while writing it) is cut off, and any other damage is an error naming
the file and position. Whole segments are deleted by :meth:`Segments.delete_before`.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from beamstream.errors import BeamstreamError

MAGIC = b"BSR1"
HEAD = struct.Struct("<4sQBI")
TAIL = struct.Struct("<Q")
KINDS = {"data": 0, "end": 1}
KIND_NAMES = {code: name for name, code in KINDS.items()}


class SpillError(BeamstreamError, OSError):
    """The spill directory cannot be used (not writable, full, damaged)."""


@dataclass(slots=True)
class Location:
    segment: Path
    position: int
    lengths: tuple[int, ...]
    kind: str

    @property
    def nbytes(self) -> int:
        return sum(self.lengths)


class Segments:
    """Append-only segment files in ``directory``; ``index`` maps each offset on disk to its place."""

    def __init__(self, directory: str | Path, segment_bytes: int = 256 << 20) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise SpillError(f"spill directory {self.directory}: {exc.strerror or exc}; "
                             "give a writable directory with free space") from None
        self.index: dict[int, Location] = {}
        self.total_bytes = 0
        self._file: Any = None
        self._path: Path | None = None
        self._scan()

    # --- opening ----------------------------------------------------------------------------

    def segment_paths(self) -> list[Path]:
        return sorted(self.directory.glob("seg-*.bss"))

    def _scan(self) -> None:
        paths = self.segment_paths()
        for number, path in enumerate(paths):
            self._scan_segment(path, last=number == len(paths) - 1)

    def _scan_segment(self, path: Path, last: bool) -> None:
        size = path.stat().st_size
        with open(path, "rb") as file:
            position = 0
            while position < size:
                record = _read_record(file, position, size)
                if record is None:
                    if not last:
                        raise SpillError(f"{path}: damaged record at byte {position}; move the file away to go on")
                    os.truncate(path, position)  # torn by a kill while it was written
                    break
                location, end = record
                location.segment = path
                self.index[_offset_at(file, position)] = location
                self.total_bytes += end - position
                position = end

    def records(self, first_frame_only: bool = False) -> Iterator[tuple[int, str, list[bytes]]]:
        """(offset, kind, frames) of everything on disk, in offset order (for rebuilding state)."""
        for offset in sorted(self.index):
            yield offset, self.index[offset].kind, self.read(offset, 1 if first_frame_only else None)

    # --- writing ----------------------------------------------------------------------------

    def append(self, offset: int, frames: list[Any], kind: str) -> None:
        """Write one message through to disk; SpillError (nothing half-written remains) on failure."""
        views = [memoryview(frame.buffer if hasattr(frame, "buffer") else frame).cast("B") for frame in frames]
        lengths = tuple(view.nbytes for view in views)
        digest = xxhash.xxh3_64()
        for view in views:
            digest.update(view)
        if self._file is None or self._file.tell() >= self.segment_bytes:
            self._roll(offset)
        position = self._file.tell()
        try:
            self._file.write(HEAD.pack(MAGIC, offset, KINDS[kind], len(views)))
            self._file.write(struct.pack(f"<{len(views)}Q", *lengths))
            for view in views:
                self._file.write(view)
            self._file.write(TAIL.pack(digest.intdigest()))
            self._file.flush()
        except OSError as exc:
            self._file.truncate(position)
            self._file.seek(position)
            raise SpillError(f"cannot write to {self._path}: {exc.strerror or exc}") from None
        self.index[offset] = Location(self._path, position, lengths, kind)
        self.total_bytes += self._file.tell() - position

    def _roll(self, offset: int) -> None:
        if self._file is not None:
            self._file.close()
        self._path = self.directory / f"seg-{offset:012d}.bss"
        self._file = open(self._path, "ab")

    # --- reading and deleting -----------------------------------------------------------------

    def read(self, offset: int, frames: int | None = None) -> list[bytes]:
        """The frames of message ``offset`` as stored (only the first ``frames`` of them, if given)."""
        location = self.index[offset]
        start = location.position + HEAD.size + 8 * len(location.lengths)
        with open(location.segment, "rb") as file:
            file.seek(start)
            return [file.read(length) for length in location.lengths[:frames]]

    def delete_before(self, offset: int, older_than: float | None = None) -> int:
        """Delete, oldest first, each segment whose messages are all below ``offset`` (and, if
        ``older_than`` is given, last written more than that many seconds ago); returns bytes freed.
        The segment being written is never deleted."""
        freed = 0
        paths = self.segment_paths()
        now = time.time()
        for path, following in zip(paths, paths[1:], strict=False):
            if int(following.stem[4:]) > offset or path == self._path:
                break
            if older_than is not None and now - path.stat().st_mtime < older_than:
                break
            doomed = [o for o, location in self.index.items() if location.segment == path]
            size = path.stat().st_size
            path.unlink()
            for stale in doomed:
                del self.index[stale]
            self.total_bytes -= size
            freed += size
        return freed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _offset_at(file: Any, position: int) -> int:
    file.seek(position)
    return HEAD.unpack(file.read(HEAD.size))[1]


def _read_record(file: Any, position: int, size: int) -> tuple[Location, int] | None:
    """The record at ``position`` and where the next one starts, or None if it is torn or damaged."""
    file.seek(position)
    head = file.read(HEAD.size)
    if len(head) < HEAD.size:
        return None
    magic, _, kind, count = HEAD.unpack(head)
    if magic != MAGIC or kind not in KIND_NAMES:
        return None
    raw = file.read(8 * count)
    if len(raw) < 8 * count:
        return None
    lengths = struct.unpack(f"<{count}Q", raw)
    end = position + HEAD.size + 8 * count + sum(lengths) + TAIL.size
    if end > size:
        return None
    digest = xxhash.xxh3_64()
    for length in lengths:
        digest.update(file.read(length))
    if TAIL.unpack(file.read(TAIL.size))[0] != digest.intdigest():
        return None
    return Location(Path(), position, lengths, KIND_NAMES[kind]), end
