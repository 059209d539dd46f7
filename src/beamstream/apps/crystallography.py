"""Serial crystallography hits as CrystFEL reads them: CXI files of hits with their peak tables, a geometry
file and a file list, written by any number of members of one consumer group.

Each member writes its own files, ``hits-{stream}-{member}-{index:04d}.cxi`` (at most ``hits_per_file``
hits each), under ``NAME.part`` until complete; a complete file gets its final name and then its
line in ``files.lst`` (appended under an exclusive lock, so members never mix their lines). So
``files.lst`` lists every complete file once, and as a group gets each message once, the listed
files hold every hit of the stream once. A member that dies leaves its open file ``.part``: the
hits in it that it had acknowledged are in no listed file.

A hit file (CXI 1.5, readable by HDF5 1.10 and later)::

    /entry_1/data_1/data                  the hits' images (n, rows, cols), or (n, panels * rows, cols)
    /entry_1/result_1/nPeaks              int32 (n,): peaks of each hit
    /entry_1/result_1/peakXPosRaw         float32 (n, max_peaks): column of each peak (fast scan)
    /entry_1/result_1/peakYPosRaw         float32 (n, max_peaks): row in the stacked frame (slow scan)
    /entry_1/result_1/peakTotalIntensity  float32 (n, max_peaks)
    /entry_1/_beamstream/seq, time        the hits' sequence numbers and times
    /entry_1/instrument_1/...             the stream's description (:mod:`beamstream.sinks.cxi`)
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import msgspec
import numpy as np

from beamstream.atomic import commit, partial_path
from beamstream.codecs.hdf5 import LIBVER
from beamstream.interrupts import deferred
from beamstream.modes import create_file, make_dirs
from beamstream.saving import safe_name, save_file
from beamstream.quantities import photon_energy_ev
from beamstream.sinks.cxi import write_structure
from beamstream.wire.metadata import FieldMetadata, RunMetadata

FILE_LIST = "files.lst"
GEOMETRY = "detector.geom"
RESULT = "/entry_1/result_1"
META = "/entry_1/_beamstream"
DATA = "/entry_1/data_1"
PEAK_DATASETS = {"nPeaks": "npeaks", "peakXPosRaw": "peak_x", "peakYPosRaw": "peak_y",
                 "peakTotalIntensity": "peak_intensity"}
"""CXI peak list dataset → suffix of the stream field (``<prefix>_<suffix>``) it is written from."""


@dataclass(frozen=True, slots=True)
class Hits:
    """Hits of one message: their sequence numbers, times, frames (stacked: ``(n, rows, cols)``) and peak tables
    keyed by CXI dataset name (see :data:`PEAK_DATASETS`)."""

    seq: np.ndarray
    time: np.ndarray
    frames: np.ndarray
    peaks: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.seq)


def select_hits(seq: np.ndarray, time: np.ndarray, images: np.ndarray, tables: dict[str, np.ndarray],
                prefix: str, min_peaks: int) -> Hits:
    """The events with at least ``min_peaks`` peaks among ``images`` (batch axis first) and their peak tables
    ``tables`` (fields ``<prefix>_npeaks``, ``<prefix>_peak_x``...); frames stacked to 2-D as peakfinder8 searches
    them."""
    hit = tables[f"{prefix}_npeaks"] >= min_peaks
    frames = images[hit]
    frames = frames.reshape(len(frames), int(np.prod(images.shape[1:-1])), images.shape[-1])
    return Hits(seq[hit], time[hit], frames, {name: tables[f"{prefix}_{suffix}"][hit]
                                              for name, suffix in PEAK_DATASETS.items()})


class HitFiles:
    """One member's hit files in ``directory``: appends hits, starts a new file every ``hits_per_file`` hits,
    and lists each file in ``files.lst`` once it is complete."""

    def __init__(self, directory: Path, member: str, hits_per_file: int) -> None:
        make_dirs(directory)
        self.directory = directory
        self.member = safe_name(member)
        self.hits_per_file = hits_per_file
        self.files = 0
        self.hits = 0
        self.written: list[Path] = []  # complete files, in order
        self._h5: h5py.File | None = None
        self._path: Path | None = None
        self._count = 0  # hits wholly written to the open file

    def add(self, hits: Hits, stream: str, metadata: RunMetadata, field: str) -> None:
        """Append ``hits`` (of stream ``stream``, whose image field is ``field``), across files as they fill."""
        start = 0
        while start < len(hits):
            if self._h5 is None:
                self._open(hits, stream, metadata, field)
            take = min(len(hits) - start, self.hits_per_file - self._count)
            self._append(hits, start, start + take)
            start += take
            if self._count == self.hits_per_file:
                self.close()

    def close(self) -> None:
        """Finish the open file (its datasets cut to the hits wholly written), give it its final name and list it;
        a file without hits is removed instead. Safe to call again. A Ctrl-C meanwhile waits until it is done."""
        if self._h5 is None:
            return
        with deferred():
            h5, path, count = self._h5, self._path, self._count
            self._h5 = None
            for dataset in (h5[f"{DATA}/data"], h5[f"{META}/seq"], h5[f"{META}/time"],
                            *(h5[f"{RESULT}/{name}"] for name in PEAK_DATASETS)):
                dataset.resize(count, axis=0)
            h5.close()
            if count == 0:
                partial_path(path).unlink()
                return
            commit(path)
            append_line(self.directory / FILE_LIST, str(path.absolute()))
            self.written.append(path)

    def _open(self, hits: Hits, stream: str, metadata: RunMetadata, field: str) -> None:
        self._path = self.directory / f"hits-{safe_name(stream)}-{self.member}-{self.files:04d}.cxi"
        self.files += 1
        self._count = 0
        partial = partial_path(self._path)
        with deferred():  # a Ctrl-C here waits: the file is made whole, for close() to finish, or not at all
            os.close(create_file(partial))
            self._h5 = self._created(h5py.File(partial, "w", libver=LIBVER), partial, hits, metadata, field)

    @staticmethod
    def _created(h5: h5py.File, partial: Path, hits: Hits, metadata: RunMetadata, field: str) -> h5py.File:
        """``h5`` with the hit file's structure (for ``hits``' shapes); removed if that fails."""
        try:
            h5["cxi_version"] = 150
            frame = hits.frames.shape[1:]
            h5.create_dataset(f"{DATA}/data", shape=(0, *frame), maxshape=(None, *frame), dtype=hits.frames.dtype,
                              chunks=(1, *frame))
            meta = h5.require_group(META)
            meta.create_dataset("seq", shape=(0,), maxshape=(None,), dtype="<i8", chunks=True)
            meta.create_dataset("time", shape=(0,), maxshape=(None,), dtype="<f8", chunks=True)
            result = h5.require_group(RESULT)
            for name, table in hits.peaks.items():
                result.create_dataset(name, shape=(0, *table.shape[1:]), maxshape=(None, *table.shape[1:]),
                                      dtype=table.dtype, chunks=(64, *table.shape[1:]))
            write_structure(h5, _signal_described(metadata, field), DATA, "data", META)
        except BaseException:
            h5.close()
            partial.unlink()
            raise
        return h5

    def _append(self, hits: Hits, start: int, stop: int) -> None:
        h5, old, new = self._h5, self._count, self._count + stop - start
        parts = {f"{DATA}/data": hits.frames, f"{META}/seq": hits.seq, f"{META}/time": hits.time,
                 **{f"{RESULT}/{name}": table for name, table in hits.peaks.items()}}
        for path, values in parts.items():
            h5[path].resize(new, axis=0)
            h5[path][old:new] = values[start:stop]
        self._count = new
        self.hits += stop - start


def _signal_described(metadata: RunMetadata, field: str) -> RunMetadata:
    """``metadata`` with ``field``'s entry also under ``data``, the name the hit files give the images."""
    entry = metadata.fields.get(field, FieldMetadata())
    return msgspec.structs.replace(metadata, fields={**metadata.fields, "data": entry})


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` in one write under an exclusive lock, so that writers never interleave, and
    fsync it; ``path`` is created if missing."""
    descriptor = create_file(path, append=True)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.write(descriptor, (line + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)  # releases the lock


def geometry_text(event_shape: tuple[int, ...], entry: FieldMetadata, metadata: RunMetadata,
                  centre: tuple[float, float] | None = None) -> str:
    """A CrystFEL geometry file for images of ``event_shape`` as the hit files store them: one CrystFEL panel per
    detector panel (leading axes flattened), stacked along the slow scan as peakfinder8 searches them, with the
    beam at ``centre`` (``[row, col]`` of the stacked frame; default its middle). Pixel size, camera length and
    photon energy come from the stream's description; a line CrystFEL needs and the description lacks is left
    as a comment that says what to set."""
    rows, cols = event_shape[-2:]
    panels = int(np.prod(event_shape[:-2], dtype=int))
    row, col = centre if centre is not None else ((panels * rows - 1) / 2, (cols - 1) / 2)
    energy = photon_energy_ev(metadata.constants)  # from photon_energy or wavelength
    lines = [f"; CrystFEL geometry written by beamstream for {panels} panel(s) of {rows} x {cols} pixels",
             f"; ({entry.detector or 'detector'}), stacked along the slow scan as in the hit files",
             f"photon_energy = {energy:.6g}" if energy is not None
             else "; photon_energy = ?  (eV; the stream does not say: set it)",
             f"clen = {entry.distance:.6g}" if entry.distance is not None
             else "; clen = ?  (m; the stream does not say: set it)",
             f"res = {1 / entry.pixel_size[-1]:.6g}" if entry.pixel_size
             else "; res = ?  (pixels per metre; the stream does not say: set it)",
             "adu_per_photon = 1", f"data = {DATA}/data", "dim0 = %", "dim1 = ss", "dim2 = fs",
             f"peak_list = {RESULT}", "peak_list_type = cxi", ""]
    for panel in range(panels):
        name = f"p{panel}"
        lines += [f"{name}/min_fs = 0", f"{name}/max_fs = {cols - 1}", f"{name}/min_ss = {panel * rows}",
                  f"{name}/max_ss = {(panel + 1) * rows - 1}", f"{name}/corner_x = {-col:g}",
                  f"{name}/corner_y = {panel * rows - row:g}", f"{name}/fs = +1.0x", f"{name}/ss = +1.0y", ""]
    return "\n".join(lines)


def write_geometry(directory: Path, text: str) -> Path:
    """``detector.geom`` in ``directory``, written atomically (every member writes the same text)."""
    path = directory / GEOMETRY
    save_file(path, text.encode())
    return path
