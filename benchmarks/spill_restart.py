"""Restarting the buffer on a large spill: with the segments' indexes against the full scan.

    .venv/bin/python benchmarks/spill_restart.py [--gb 20] [--message-mib 8] [--repeat 3] [--dir DIR]

Builds a spill of ``--gb`` GiB in a temporary folder under ``--dir``: segments of 256 MiB (as the
buffer cuts them) of records [300-byte header, ``--message-mib`` MiB of zeros] in the layout of
``beamstream/buffer/segments.py``, the zeros left as holes, so the spill takes a few MiB of disk.
Then times a restart as the buffer does it, ``Segments.recover`` and every record's first frame
(``records(first_frame_only=True)``), in three states of the spill:

  full scan     no index (a spill written before indexes): every record is read and hashed
  after a kill  every segment indexed but the last, which the killed writer never sealed
  clean stop    every segment indexed

Each run starts with the spill's pages dropped from the page cache (``posix_fadvise DONTNEED`` on
its files), as after a reboot or on a spill larger than memory; each row is the median of
``--repeat`` runs. The payloads are holes, so the full scan reads zeros that the kernel makes up
without touching the disk: on a spill of real data on disk it is slower still.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import xxhash

from beamstream.buffer.segments import SEGMENT_BYTES, Segments, index_path
from beamstream.wire.spill import HEAD, MAGIC, TAIL

HEADER = b"\x85" + bytes(299)  # stands for a message header: only its size matters here
MiB = 1 << 20
GiB = 1 << 30


def build(spill: Path, messages: int, payload: int) -> list[Path]:
    """Write ``messages`` records [HEADER, ``payload`` zeros] into 256 MiB segments, the zeros as holes; no index."""
    digest = xxhash.xxh3_64(HEADER)
    zeros = bytes(min(payload, 16 * MiB))
    for start in range(0, payload, len(zeros)):
        digest.update(zeros[:payload - start])
    record = HEAD.size + 16 + len(HEADER) + payload + TAIL.size
    per_segment = -(-SEGMENT_BYTES // record)  # the writer moves on once a segment reaches SEGMENT_BYTES
    paths = []
    for first in range(0, messages, per_segment):
        path = spill / f"seg-{first:012d}.bss"
        with open(path, "wb") as file:
            for offset in range(first, min(first + per_segment, messages)):
                file.write(HEAD.pack(MAGIC, offset, 0, 2) + struct.pack("<2Q", len(HEADER), payload) + HEADER)
                file.seek(payload, os.SEEK_CUR)
                file.write(TAIL.pack(digest.intdigest()))
        paths.append(path)
    return paths


def restart(spill: Path, messages: int) -> float:
    """Seconds to recover the spill and read every record's first frame, as the buffer's restart does,
    from a cold page cache."""
    evict(spill)
    start = time.perf_counter()
    segments = Segments.recover(spill, SEGMENT_BYTES)
    headers = sum(1 for _ in segments.records(first_frame_only=True))
    elapsed = time.perf_counter() - start
    assert headers == messages, f"{headers} records found, {messages} written"
    return elapsed


def evict(spill: Path) -> None:
    """Drop the pages of the spill's files from the page cache."""
    for path in spill.iterdir():
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def unindex(paths: list[Path]) -> None:
    for path in paths:
        index_path(path).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=20, help="logical size of the spill in GiB (default 20)")
    parser.add_argument("--message-mib", type=float, default=8, help="payload of each message in MiB (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (default 3)")
    parser.add_argument("--dir", default=None, help="where the temporary spill goes (a file system with sparse files)")
    args = parser.parse_args()
    payload = int(args.message_mib * MiB)
    messages = int(args.gb * GiB // payload)
    with tempfile.TemporaryDirectory(prefix="spill-restart-", dir=args.dir) as folder:
        spill = Path(folder)
        paths = build(spill, messages, payload)
        on_disk = sum(path.stat().st_blocks * 512 for path in paths)
        if on_disk > GiB:
            sys.exit(f"{spill}: the file system keeps no sparse files; give --dir on one that does (ext4, xfs, tmpfs)")
        logical = sum(path.stat().st_size for path in paths)
        print(f"spill: {logical / GiB:.1f} GiB in {len(paths)} segments, {messages} messages of "
              f"{args.message_mib:g} MiB; {on_disk / MiB:.1f} MiB on disk")
        rows: dict[str, list[float]] = {"full scan": [], "after a kill": [], "clean stop": []}
        for _ in range(args.repeat):
            unindex(paths)
            rows["full scan"].append(restart(spill, messages))
            unindex(paths[-1:])
            rows["after a kill"].append(restart(spill, messages))
            rows["clean stop"].append(restart(spill, messages))
        scan = statistics.median(rows["full scan"])
        for name, times in rows.items():
            median = statistics.median(times)
            ratio = "" if name == "full scan" else f"  {scan / median:.0f}× faster than the full scan"
            print(f"{name:>13}: {median:7.3f} s{ratio}  [{', '.join(f'{t:.3f}' for t in times)}]")


if __name__ == "__main__":
    main()
