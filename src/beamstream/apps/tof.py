"""Time-of-flight histograms accumulated across the members of a consumer group, readable at any time.

Each member reads the hit fields of the ``cfd`` step (:mod:`beamstream.steps.tof`) and keeps one
histogram of hit times plus the per-event hit lists of the events it got. For ``--out run.h5``
member ``M`` writes its own snapshot, ``run.h5.members/M.h5``, every few seconds on a thread of its own (while it
goes on reading; less often once writing would take over :data:`WRITING_SHARE` of the time) and when the stream
ends, and after each one sums every member snapshot of the same stream into ``run.h5``, under a lock so
that the last merge to run saw every member's last snapshot. Every file is written atomically
(:mod:`beamstream.atomic`): a reader opening ``run.h5`` at any moment sees a whole snapshot.

A snapshot (member or merged) holds ``edges`` (bin edges, samples), ``counts`` (int64 per bin),
``events/seq``, ``events/count`` (hits found per event) and ``events/times`` (float32, NaN-padded,
rows in ``seq`` order), with attributes ``stream``, ``members``, ``events``, ``hits_found`` (the
sum of ``events/count``), ``hits_kept`` (the times the step kept: at most ``max_hits`` an event) and
``hits_outside`` (kept times outside the edges). Promise: ``counts.sum() + hits_outside == hits_kept``.
Snapshots of other streams in the members folder are left out of the merge (a folder reused across runs).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from beamstream.atomic import commit, partial_path
from beamstream.modes import create_file

MEMBERS_SUFFIX = ".members"
WRITING_SHARE = 0.1
"""A member's writing thread is busy at most this share of the time: a snapshot that took ``w`` seconds (merge and
lock included) is followed by ``w * (1 - share) / share`` seconds without, however short ``every``. A write costs
time in proportion to the events so far, so in a long run snapshots come further apart instead of taking ever more
of the machine."""


@dataclass
class TofSnapshot:
    """A histogram of hit times and the hit lists behind it (see the module's docstring for the file layout)."""

    edges: np.ndarray
    stream: str = ""
    members: int = 1
    counts: np.ndarray = field(init=False)
    hits_found: int = 0
    hits_kept: int = 0
    hits_outside: int = 0
    seq: list[np.ndarray] = field(default_factory=list)
    count: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def add(self, seq: np.ndarray, count: np.ndarray, times: np.ndarray) -> None:
        """Add a batch of events: their ``seq``, hits found per event and ``(n, max_hits)`` NaN-padded times."""
        kept = times[~np.isnan(times)]
        inside, _ = np.histogram(kept, self.edges)
        self.counts += inside
        self.hits_found += int(np.sum(count))
        self.hits_kept += len(kept)
        self.hits_outside += len(kept) - int(inside.sum())
        self.seq.append(np.asarray(seq, dtype=np.int64))
        self.count.append(np.asarray(count, dtype=np.int32))
        self.times.append(np.asarray(times, dtype=np.float32))

    def frozen(self) -> TofSnapshot:
        """This snapshot as it is now, unchanged by later :meth:`add` calls (to write on another thread). The hit
        lists are joined first and then shared, not copied: a joined array is never changed."""
        copy = TofSnapshot(self.edges, stream=self.stream, members=self.members, hits_found=self.hits_found,
                           hits_kept=self.hits_kept, hits_outside=self.hits_outside)
        copy.counts = self.counts.copy()
        copy.seq = [self._joined(self.seq, np.int64, 1)]
        copy.count = [self._joined(self.count, np.int32, 1)]
        copy.times = [self._joined(self.times, np.float32, 2)]
        return copy

    @property
    def totals(self) -> dict[str, int]:
        """``events``, ``hits_found``, ``hits_kept`` and ``hits_outside`` so far (kept as the events come)."""
        return {"events": sum(len(seq) for seq in self.seq), "hits_found": self.hits_found,
                "hits_kept": self.hits_kept, "hits_outside": self.hits_outside}

    def write(self, path: Path) -> None:
        """Write this snapshot to ``path`` atomically (complete or absent); OSError if it cannot."""
        import h5py

        from beamstream.codecs.hdf5 import LIBVER

        seq = self._joined(self.seq, np.int64, 1)
        count, times = self._joined(self.count, np.int32, 1), self._joined(self.times, np.float32, 2)
        if np.any(seq[1:] < seq[:-1]):  # events of several producers or members: put the rows in seq order
            order = np.argsort(seq, kind="stable")
            seq, count, times = seq[order], count[order], times[order]
        partial = partial_path(path)
        try:
            os.close(create_file(partial))
            with h5py.File(partial, "w", libver=LIBVER) as h5:
                h5["edges"], h5["counts"] = self.edges, self.counts
                h5["events/seq"], h5["events/count"], h5["events/times"] = seq, count, times
                h5.attrs.update({"stream": self.stream, "members": self.members, **self.totals})
            commit(path)
        except OSError:
            partial.unlink(missing_ok=True)
            raise

    @classmethod
    def read(cls, path: Path) -> TofSnapshot:
        """The snapshot in ``path`` (a member's or a merged one)."""
        import h5py

        with h5py.File(path, "r") as h5:
            snapshot = cls(h5["edges"][()], stream=str(h5.attrs["stream"]), members=int(h5.attrs["members"]))
            snapshot.counts = h5["counts"][()]
            snapshot.hits_found, snapshot.hits_kept, snapshot.hits_outside = (
                int(h5.attrs[name]) for name in ("hits_found", "hits_kept", "hits_outside"))
            snapshot.seq = [h5["events/seq"][()]]
            snapshot.count = [h5["events/count"][()]]
            snapshot.times = [h5["events/times"][()]]
        return snapshot

    def _joined(self, parts: list[np.ndarray], dtype: type, dimensions: int) -> np.ndarray:
        """``parts`` as one array, which then replaces them (the next snapshot joins it and the parts added since)."""
        if not parts:
            return np.empty((0,) * dimensions, dtype=dtype)
        if len(parts) > 1:
            width = max(part.shape[1] for part in parts) if dimensions == 2 else 0
            parts[:] = [np.concatenate([_widened(part, width) for part in parts]) if width else np.concatenate(parts)]
        return parts[0]


def _widened(times: np.ndarray, width: int) -> np.ndarray:
    """``times`` ``(n, k)`` padded with NaN to ``(n, width)`` (members may keep different numbers of hits)."""
    return times if times.shape[1] == width else np.pad(times, ((0, 0), (0, width - times.shape[1])),
                                                        constant_values=np.nan)


def merged(snapshots: list[TofSnapshot]) -> TofSnapshot:
    """One snapshot holding the sum of ``snapshots`` (same stream, same edges; ValueError otherwise)."""
    first = snapshots[0]
    total = TofSnapshot(first.edges, stream=first.stream, members=len(snapshots))
    for snapshot in snapshots:
        if snapshot.stream != first.stream or not np.array_equal(snapshot.edges, first.edges):
            raise ValueError(f"cannot merge the snapshots of streams {first.stream!r} and {snapshot.stream!r} or "
                             "with different bin edges; give every member the same --bins and --range")
        total.counts += snapshot.counts
        total.hits_found += snapshot.hits_found
        total.hits_kept += snapshot.hits_kept
        total.hits_outside += snapshot.hits_outside
        total.seq += snapshot.seq
        total.count += snapshot.count
        total.times += snapshot.times
    return total


def member_name() -> str:
    """This process's name among the members: ``HOST-PID``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class SnapshotWriter:
    """Writes one member's snapshot beside ``out`` and merges every member's of the same stream into ``out``.

    :meth:`write_when_due` writes on a thread of its own, so that the member goes on reading meanwhile (a write
    takes longer the more events the run has had): one write at a time, every ``every`` seconds, or less often
    where :data:`WRITING_SHARE` says. :meth:`close` waits for the write under way and writes the last snapshot.
    """

    def __init__(self, out: Path, member: str | None = None, every: float = 2.0) -> None:
        self.out = out
        self.folder = out.with_name(out.name + MEMBERS_SUFFIX)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{member or member_name()}.h5"
        self.every = every
        self.due = time.monotonic() + every
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tof-snapshot")
        self.writing: Future[None] | None = None

    def write_when_due(self, snapshot: TofSnapshot) -> bool:
        """Start writing ``snapshot`` as it is now (see :meth:`write`) if due and no write is under way; True if
        one started. Raises the OSError of the write before, if it failed."""
        if self.writing is not None:
            if not self.writing.done():
                return False
            self.writing.result()
            self.writing = None
        if time.monotonic() < self.due:
            return False
        self.writing = self.background.submit(self._write_timed, snapshot.frozen())
        return True

    def close(self, snapshot: TofSnapshot | None) -> None:
        """Wait for the write under way, then write ``snapshot`` (the last; none if None) here and now."""
        self.background.shutdown(wait=True)
        if snapshot is not None:
            self.write(snapshot)

    def _write_timed(self, snapshot: TofSnapshot) -> None:
        started = time.monotonic()
        self.write(snapshot)
        took = time.monotonic() - started
        self.due = started + took + max(self.every, took * (1 - WRITING_SHARE) / WRITING_SHARE)

    def write(self, snapshot: TofSnapshot) -> None:
        """Write ``snapshot`` as this member's, then the merged snapshot of its stream to ``out``; OSError if not."""
        snapshot.write(self.path)
        descriptor = create_file(self.folder / ".lock", append=True)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            members = [TofSnapshot.read(path) for path in sorted(self.folder.glob("*.h5"))]
            merged([member for member in members if member.stream == snapshot.stream]).write(self.out)
        finally:
            os.close(descriptor)
