"""Segment files: the buffer's messages on disk, for replay and for surviving a restart.

Segments and their indexes are laid out as :mod:`beamstream.wire.spill` defines. Records are
appended as messages arrive (written through, before any consumer sees them). A segment is
sealed when the writer moves on to the next one or closes, and when :meth:`Segments.recover`
finds it at the end of a spill (a restarted writer starts a new segment); sealing writes its
index (to ``seg-….idx.part``, fsynced, then renamed). The indexes hold every record's first
frame, the message header, so they alone rebuild the stream's account after a restart.

Opening trusts a segment's index, without reading the segment, when the index is intact (its
checksum verifies, its records follow one another from byte 0, the first at the segment's first
offset) and the segment has the size the index names. Any other segment is scanned record by
record, every frame hashed: a torn record at the end of the last segment (the buffer was killed
while writing it) ends the scan, a bad record anywhere else is an error naming the file and byte.
Opening changes nothing on disk; :meth:`Segments.recover` also cuts the torn record off and writes
the missing indexes. Whole segments, with their indexes, are deleted by :meth:`Segments.delete_before`.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple

import xxhash

from beamstream.atomic import write_atomically
from beamstream.modes import create_file, make_dirs
from beamstream.errors import BeamstreamError
from beamstream.wire.frames import frame_buffer
from beamstream.wire.spill import HEAD, INDEX_ENTRY, INDEX_HEAD, INDEX_MAGIC, KIND_NAMES, KINDS, MAGIC, TAIL

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 256 << 20
CHUNK = 1 << 20  # bytes hashed at a time when a segment is scanned


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

    @property
    def end(self) -> int:
        """Where the record ends in its segment (where the next one starts)."""
        return self.position + HEAD.size + 8 * len(self.lengths) + self.nbytes + TAIL.size


class Record(NamedTuple):
    """A record as an index lists it: its offset, its place, and its first frame ([] for a record of no frames)."""

    offset: int
    location: Location
    first: list[bytes]


class Segments:
    """Append-only segment files in ``directory``; ``index`` maps each offset on disk to its place."""

    def __init__(self, directory: str | Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        """Open the segments in ``directory`` (created if missing), changing no segment and no index.

        A torn record at the end of the last segment is left in the file and out of ``index``;
        :meth:`append` then refuses until :meth:`recover` has cut it off.
        """
        self._prepare(directory, segment_bytes)
        self._open(repair=False)

    @classmethod
    def recover(cls, directory: str | Path, segment_bytes: int = SEGMENT_BYTES) -> Segments:
        """Open the segments in ``directory`` to go on writing after a stop or a kill, repairing on disk
        what that left: cuts a torn record off the end of the last segment, and writes the index of
        every segment without an intact one (the last one too: writing goes on in a new segment), so
        that the next opening reads only the indexes and what was written since."""
        segments = cls.__new__(cls)
        segments._prepare(directory, segment_bytes)
        for partial in segments.directory.glob("seg-*.idx.part"):  # left by a kill while sealing
            partial.unlink()
        segments._open(repair=True)
        return segments

    # --- opening ----------------------------------------------------------------------------

    def _prepare(self, directory: str | Path, segment_bytes: int) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        try:
            make_dirs(self.directory)
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
        self._written: list[Record] = []  # the records of the segment being written, for its index
        self._torn: tuple[Path, int] | None = None  # a torn record left in place by a plain opening

    def segment_paths(self) -> list[Path]:
        """The segment files, oldest first."""
        return sorted(self.directory.glob("seg-*.bss"))

    def _open(self, repair: bool) -> None:
        paths = self.segment_paths()
        for number, path in enumerate(paths):
            records = read_index(path)
            if records is None:
                records = self._scan_segment(path, last=number == len(paths) - 1, repair=repair)
            for record in records:
                self.index[record.offset] = record.location
                self.total_bytes += record.location.end - record.location.position

    def _scan_segment(self, path: Path, last: bool, repair: bool) -> list[Record]:
        """The records of ``path``, read and hashed; with ``repair``, a torn tail cut off and the index written."""
        if index_path(path).exists():
            logger.warning("%s: index damaged or out of date; scanning the segment", index_path(path))
        records, end = _scan(path)
        if end < path.stat().st_size:
            if not last:
                raise SpillError(f"{path}: damaged record at byte {end}; move the file away to go on")
            if not repair:
                self._torn = (path, end)
                return records
            logger.warning("%s: cut a torn record off at byte %d", path, end)
            os.truncate(path, end)
        if repair:
            _seal(path, records)
        return records

    def records(self, first_frame_only: bool = False) -> Iterator[tuple[int, str, list[bytes]]]:
        """(offset, kind, frames) of everything on disk, in offset order (for rebuilding state). With
        ``first_frame_only`` the first frames come from the segments' indexes where they are intact:
        for sealed segments no payload is read."""
        for segment, offsets in groupby(sorted(self.index), key=lambda offset: self.index[offset].segment):
            firsts = _first_frames(segment) if first_frame_only else None
            for offset in offsets:
                frames = firsts[offset] if firsts is not None else self.read(offset, 1 if first_frame_only else None)
                yield offset, self.index[offset].kind, frames

    # --- writing ----------------------------------------------------------------------------

    def append(self, offset: int, frames: list[Any], kind: str) -> None:
        """Write one message through to disk; SpillError (nothing half-written remains) on failure."""
        if self._torn is not None:
            path, position = self._torn
            raise SpillError(f"{path}: torn record at byte {position}; open the spill with Segments.recover() "
                             "to cut it off before writing")
        views = [memoryview(frame_buffer(frame)).cast("B") for frame in frames]
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
        location = Location(self._path, position, lengths, kind)
        self.index[offset] = location
        self._written.append(Record(offset, location, [bytes(view) for view in views[:1]]))
        self.total_bytes += location.end - position

    def _roll(self, offset: int) -> None:
        self.close()
        self._path = self.directory / f"seg-{offset:012d}.bss"
        self._file = os.fdopen(create_file(self._path, append=True), "ab")

    def close(self) -> None:
        """Seal the segment being written (close it and write its index)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            _seal(self._path, self._written)
            self._written = []

    # --- reading and deleting -----------------------------------------------------------------

    def read(self, offset: int, frames: int | None = None) -> list[bytes]:
        """The frames of message ``offset`` as stored (only the first ``frames`` of them, if given)."""
        location = self.index[offset]
        start = location.position + HEAD.size + 8 * len(location.lengths)
        with open(location.segment, "rb") as file:
            file.seek(start)
            return [file.read(length) for length in location.lengths[:frames]]

    def delete_before(self, offset: int, older_than: float | None = None) -> int:
        """Delete, oldest first, each segment (with its index) whose messages are all below ``offset``
        (and, if ``older_than`` is given, last written more than that many seconds ago); returns bytes
        freed. The segment being written is never deleted."""
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
            index_path(path).unlink(missing_ok=True)  # first: a segment without its index is only scanned
            path.unlink()
            for stale in doomed:
                del self.index[stale]
            self.total_bytes -= size
            freed += size
        return freed


# --- indexes --------------------------------------------------------------------------------


def index_path(segment: Path) -> Path:
    """Where the index of ``segment`` is (``seg-….idx``)."""
    return segment.with_suffix(".idx")


def write_index(segment: Path, records: Sequence[Record]) -> None:
    """Write the index of ``segment``, which holds exactly ``records`` and is complete: the index names
    its size now. Atomic: written to ``seg-….idx.part``, fsynced, renamed over ``seg-….idx``."""
    parts = [INDEX_HEAD.pack(INDEX_MAGIC, segment.stat().st_size, len(records))]
    for offset, location, first in records:
        count = len(location.lengths)
        parts += [INDEX_ENTRY.pack(offset, location.position, KINDS[location.kind], count),
                  struct.pack(f"<{count}Q", *location.lengths), *first]
    body = b"".join(parts)
    write_atomically(index_path(segment), body + TAIL.pack(xxhash.xxh3_64_intdigest(body)))


def read_index(segment: Path) -> list[Record] | None:
    """The records that the index of ``segment`` lists, or None if the index is missing, damaged, or
    does not match the segment (its size, its first offset); reads the index only."""
    try:
        with open(index_path(segment), "rb") as file:
            data = file.read()
        size = segment.stat().st_size
    except FileNotFoundError:
        return None
    if len(data) < INDEX_HEAD.size + TAIL.size:
        return None
    body = memoryview(data)[:-TAIL.size]
    if TAIL.unpack_from(data, len(body))[0] != xxhash.xxh3_64_intdigest(body):
        return None
    magic, segment_size, count = INDEX_HEAD.unpack_from(body)
    if magic != INDEX_MAGIC or segment_size != size:
        return None
    records = _index_entries(segment, body, count)
    return records if records is not None and _fits(segment, records, size) else None


def _index_entries(segment: Path, body: memoryview, count: int) -> list[Record] | None:
    """The ``count`` records listed in an index's ``body`` (checksum verified), or None if it does not parse."""
    records = []
    cursor = INDEX_HEAD.size
    try:
        for _ in range(count):
            offset, position, kind, frames = INDEX_ENTRY.unpack_from(body, cursor)
            lengths = struct.unpack_from(f"<{frames}Q", body, cursor + INDEX_ENTRY.size)
            cursor += INDEX_ENTRY.size + 8 * frames
            first = [bytes(body[cursor:cursor + lengths[0]])] if frames else []
            cursor += lengths[0] if frames else 0
            records.append(Record(offset, Location(segment, position, lengths, KIND_NAMES[kind]), first))
    except (struct.error, KeyError):
        return None
    return records if cursor == len(body) else None


def _fits(segment: Path, records: list[Record], size: int) -> bool:
    """True if ``records`` follow one another from byte 0 to ``size``, the first at the segment's first offset."""
    end = 0
    for record in records:
        if record.location.position != end:
            return False
        end = record.location.end
    return end == size and (not records or records[0].offset == int(segment.stem[4:]))


def _first_frames(segment: Path) -> dict[int, list[bytes]] | None:
    """Each record's first frame from the index of ``segment``, by offset; None without an intact index."""
    records = read_index(segment)
    return None if records is None else {record.offset: record.first for record in records}


def _seal(segment: Path, records: Sequence[Record]) -> None:
    """Write the index of ``segment``; on failure the segment stays unindexed (a later opening scans it)."""
    try:
        write_index(segment, records)
    except OSError as exc:
        segment.with_suffix(".idx.part").unlink(missing_ok=True)
        logger.warning("cannot write the index of %s: %s; the next restart scans the segment", segment,
                    exc.strerror or exc)


# --- scanning -------------------------------------------------------------------------------


def _scan(segment: Path) -> tuple[list[Record], int]:
    """The intact records of ``segment`` from byte 0, every frame hashed, and the byte where they end
    (the segment's size, unless a record there is torn or damaged)."""
    size = segment.stat().st_size
    records = []
    position = 0
    with open(segment, "rb") as file:
        while position < size:
            record = _read_record(file, segment, position, size)
            if record is None:
                break
            records.append(record)
            position = record.location.end
    return records, position


def _read_record(file: Any, segment: Path, position: int, size: int) -> Record | None:
    """The record at ``position`` (first frame read, every frame hashed), or None if it is torn or damaged."""
    file.seek(position)
    head = file.read(HEAD.size)
    if len(head) < HEAD.size:
        return None
    magic, offset, kind, count = HEAD.unpack(head)
    if magic != MAGIC or kind not in KIND_NAMES or position + HEAD.size + 8 * count > size:
        return None
    lengths = struct.unpack(f"<{count}Q", file.read(8 * count))
    location = Location(segment, position, lengths, KIND_NAMES[kind])
    if location.end > size:
        return None
    first = [file.read(length) for length in lengths[:1]]
    digest = xxhash.xxh3_64()
    for frame in first:
        digest.update(frame)
    if not _hash(file, sum(lengths[1:]), digest) or TAIL.unpack(file.read(TAIL.size))[0] != digest.intdigest():
        return None
    return Record(offset, location, first)


def _hash(file: Any, nbytes: int, digest: Any) -> bool:
    """Feed the next ``nbytes`` of ``file`` to ``digest``, a chunk at a time; False if the file ends first."""
    chunk = memoryview(bytearray(min(nbytes, CHUNK)))
    while nbytes:
        got = file.readinto(chunk[:min(nbytes, CHUNK)])
        if not got:
            return False
        digest.update(chunk[:got])
        nbytes -= got
    return True
