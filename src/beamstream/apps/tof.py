"""Time-of-flight histograms accumulated across the members of a consumer group, readable at any time.

Each member reads the hit fields of the ``cfd`` step (:mod:`beamstream.steps.tof`) and keeps one
histogram of hit times plus the per-event hit lists of the events it got. For ``--out run.h5``
member ``M`` writes its own snapshot, ``run.h5.members/M.h5``, every few seconds and when the stream
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from beamstream.atomic import commit, partial_path
from beamstream.modes import create_file

MEMBERS_SUFFIX = ".members"


@dataclass
class TofSnapshot:
    """A histogram of hit times and the hit lists behind it (see the module's docstring for the file layout)."""

    edges: np.ndarray
    stream: str = ""
    members: int = 1
    counts: np.ndarray = field(init=False)
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
        self.hits_outside += len(kept) - int(inside.sum())
        self.seq.append(np.asarray(seq, dtype=np.int64))
        self.count.append(np.asarray(count, dtype=np.int32))
        self.times.append(np.asarray(times, dtype=np.float32))

    @property
    def totals(self) -> dict[str, int]:
        """``events``, ``hits_found``, ``hits_kept`` and ``hits_outside`` so far."""
        times = self._joined(self.times, np.float32, 2)
        return {"events": sum(len(seq) for seq in self.seq), "hits_found": int(sum(int(c.sum()) for c in self.count)),
                "hits_kept": int(np.count_nonzero(~np.isnan(times))), "hits_outside": self.hits_outside}

    def write(self, path: Path) -> None:
        """Write this snapshot to ``path`` atomically (complete or absent); OSError if it cannot."""
        import h5py

        from beamstream.codecs.hdf5 import LIBVER

        seq = self._joined(self.seq, np.int64, 1)
        order = np.argsort(seq, kind="stable")
        partial = partial_path(path)
        try:
            os.close(create_file(partial))
            with h5py.File(partial, "w", libver=LIBVER) as h5:
                h5["edges"], h5["counts"] = self.edges, self.counts
                h5["events/seq"] = seq[order]
                h5["events/count"] = self._joined(self.count, np.int32, 1)[order]
                h5["events/times"] = self._joined(self.times, np.float32, 2)[order]
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
            snapshot.hits_outside = int(h5.attrs["hits_outside"])
            snapshot.seq = [h5["events/seq"][()]]
            snapshot.count = [h5["events/count"][()]]
            snapshot.times = [h5["events/times"][()]]
        return snapshot

    def _joined(self, parts: list[np.ndarray], dtype: type, dimensions: int) -> np.ndarray:
        if parts:
            width = max(part.shape[1] for part in parts) if dimensions == 2 else 0
            return np.concatenate([_widened(part, width) for part in parts]) if width else np.concatenate(parts)
        return np.empty((0,) * dimensions, dtype=dtype)


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
        total.hits_outside += snapshot.hits_outside
        total.seq += snapshot.seq
        total.count += snapshot.count
        total.times += snapshot.times
    return total


def member_name() -> str:
    """This process's name among the members: ``HOST-PID``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class SnapshotWriter:
    """Writes one member's snapshot beside ``out`` and merges every member's of the same stream into ``out``."""

    def __init__(self, out: Path, member: str | None = None) -> None:
        self.out = out
        self.folder = out.with_name(out.name + MEMBERS_SUFFIX)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{member or member_name()}.h5"

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
