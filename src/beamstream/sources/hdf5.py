"""``hdf5``: events from datasets in HDF5 files (CXI, NeXus or any layout), read slice by slice.

The files are concatenated in the order given: an event's sequence number is its index along
axis 0 of that concatenation. Each rank reads only the blocks it owns, one ``ds[a:b]`` slice
per dataset and file, so no file is ever loaded whole. Only one file is open at a time.

Fields keep their dataset's dtype, in little-endian byte order (a ``>u2`` dataset streams as
``<u2``, see :class:`~beamstream.batch.Batch`). Events have the times of ``time_dataset``, or
NaN without one: the source invents none (docs/conventions.md).
"""

from __future__ import annotations

import bisect
import glob
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle, lz4 and zstd filters for reading)
import numpy as np
from pydantic import Field, field_validator, model_validator

from beamstream.batch import Batch, Share, little_endian
from beamstream.errors import SourceError
from beamstream.limits import MAX_EVENTS, MAX_EVENTS_PER_BATCH, MAX_FILES, check_memory
from beamstream.sources.hdf5_metadata import check_keys, describe_files
from beamstream.spec_paths import ReadPattern
from beamstream.stages import SourceSpec
from beamstream.wire.metadata import RunMetadata

CXI_DATA = "/entry_1/data_1/data"
DEFAULT_BLOCK = 16
LISTED_DATASETS = 20
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class FileExtent:
    """One input file; its events get sequence numbers ``[start, start + length)``."""

    path: str
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class FileLayout:
    """What one file holds: its event count, each field's (dtype as streamed, frame shape), the block hint."""

    length: int
    fields: dict[str, tuple[str, tuple[int, ...]]]
    chunk: int | None

    def event_bytes(self) -> int:
        """Bytes of one event, every field together."""
        return sum(np.dtype(dtype).itemsize * math.prod(shape) for dtype, shape in self.fields.values())


def _literal_folder(pattern: str) -> str:
    """The folder a glob pattern searches from (its path components before the first with a wildcard), without
    the root: '' for ``/**/*.h5``, ``*.h5`` or ``/*/raw/*.h5``."""
    literal = []
    for part in pattern.split(os.sep):
        if GLOB_CHARS & set(part):
            break
        literal.append(part)
    return os.sep.join(literal).strip(os.sep)


def expand_files(patterns: list[str]) -> list[str]:
    """The files ``patterns`` name, in order; each glob pattern's matches sorted.

    Raises SourceError naming a pattern that matches no file or a path that is not a file.
    """
    paths: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if GLOB_CHARS & set(pattern):
            matches = []
            for path in glob.iglob(pattern, recursive=True):
                if os.path.isfile(path):
                    matches.append(path)
                    if len(paths) + len(matches) > MAX_FILES:
                        raise SourceError(f"hdf5 source: pattern {pattern!r} matches more than {MAX_FILES:,} files "
                                          "(with the patterns before it); name the run's folder more exactly")
            matches.sort()
            if not matches:
                raise SourceError(f"hdf5 source: pattern {pattern!r} matches no file; fix files: in the spec")
            paths.extend(matches)
        elif os.path.isfile(pattern):
            paths.append(pattern)
        else:
            raise SourceError(f"hdf5 source: file {pattern!r} not found; fix files: in the spec")
    return paths


def list_datasets(h5: h5py.File, limit: int = LISTED_DATASETS) -> str:
    """The first ``limit`` datasets of ``h5`` as ``/path (shape dtype)``, comma separated."""
    found: list[str] = []

    def visit(name: str, obj: object) -> bool | None:
        if isinstance(obj, h5py.Dataset):
            found.append(f"/{name} {obj.shape} {obj.dtype}")
        return True if len(found) > limit else None  # a non-None value stops the walk

    h5.visititems(visit)
    if not found:
        return "(none)"
    more = ", ..." if len(found) > limit else ""
    return ", ".join(found[:limit]) + more


def _dataset(h5: h5py.File, path: str, dataset: str, role: str) -> h5py.Dataset:
    """Dataset ``dataset`` of ``h5``, with at least one axis; SourceError listing what exists if not."""
    obj = h5.get(dataset)
    if not isinstance(obj, h5py.Dataset):
        what = "no dataset" if obj is None else "a group, not a dataset, at"
        raise SourceError(
            f"hdf5 source: {path} has {what} {dataset!r} ({role}); datasets in the file: "
            f"{list_datasets(h5)}; fix datasets: (or time_dataset:) in the spec"
        )
    if obj.ndim == 0:
        raise SourceError(f"hdf5 source: {path}: dataset {dataset!r} ({role}) is a scalar; it needs an events axis 0")
    return obj


def inspect_file(path: str, datasets: dict[str, str], time_dataset: str | None) -> FileLayout:
    """The layout of one file; SourceError if it is not HDF5, lacks a dataset or lengths differ."""
    if not h5py.is_hdf5(path):
        raise SourceError(f"hdf5 source: {path} is not an HDF5 file; files: must name HDF5 files (.h5, .cxi, .nxs)")
    try:
        with h5py.File(path, "r") as h5:
            return _layout(h5, path, datasets, time_dataset)
    except OSError as exc:
        raise SourceError(f"hdf5 source: cannot read {path}: {exc}") from None


def _layout(h5: h5py.File, path: str, datasets: dict[str, str], time_dataset: str | None) -> FileLayout:
    fields = {name: _dataset(h5, path, dataset, f"field {name!r}") for name, dataset in datasets.items()}
    opened = {f"field {name!r}": ds for name, ds in fields.items()}
    if time_dataset is not None:
        opened["time_dataset"] = _dataset(h5, path, time_dataset, "time_dataset")
        if opened["time_dataset"].ndim != 1:
            raise SourceError(f"hdf5 source: {path}: time_dataset {time_dataset!r} must be one-dimensional")
    lengths = {role: ds.shape[0] for role, ds in opened.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{role} {opened[role].name!r} has {length}" for role, length in lengths.items())
        raise SourceError(f"hdf5 source: {path}: datasets differ in length along axis 0 ({listed}); they must all have one entry per event")
    first = next(iter(fields.values()))
    return FileLayout(
        length=first.shape[0],
        fields={name: (little_endian(ds.dtype).str, ds.shape[1:]) for name, ds in fields.items()},
        chunk=first.chunks[0] if first.chunks else None,
    )


class OpenFile:
    """At most one open input file at a time: asking for another closes the previous one."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.h5: h5py.File | None = None

    def get(self, path: str) -> h5py.File:
        if path != self.path:
            self.close()
            self.h5, self.path = h5py.File(path, "r"), path
        return self.h5

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()
        self.h5, self.path = None, None


class HDF5Reader:
    """The runtime side of :class:`HDF5Source`: partitions and reads the files it was opened on.

    Promises: ``partition`` covers ``[0, total)`` in blocks of ``block`` events; ``read``
    yields one batch per owned block, in increasing ``seq``, reading only that block's slices.
    """

    def __init__(self, extents: list[FileExtent], datasets: dict[str, str], time_dataset: str | None,
                 block: int, total: int, entries: dict[str, str], first_path: str) -> None:
        self.extents = extents
        self.starts = [extent.start for extent in extents]
        self.datasets = datasets
        self.time_dataset = time_dataset
        self.entries = entries
        self.first_path = first_path
        self.block = block
        self.total = total

    def partition(self, rank: int, producers: int) -> Share:
        """Rank ``rank`` of ``producers``: block-cyclic over ``[0, total)``."""
        if not 0 <= rank < producers:
            raise ValueError(f"rank {rank} is not in 0..{producers - 1}")
        return Share(rank=rank, producers=producers, start=0, stop=self.total, block=self.block)

    def read(self, share: Share) -> Iterator[Batch]:
        """One batch per block of ``share`` inside ``[0, total)``, in increasing ``seq``."""
        handle = OpenFile()
        try:
            for index in share.blocks():
                first, stop = share.block_range(index)
                if first >= self.total:
                    return
                yield self._read_range(handle, first, min(stop, self.total))
        finally:
            handle.close()

    def _read_range(self, handle: OpenFile, first: int, stop: int) -> Batch:
        """Events ``[first, stop)``, which may lie in several consecutive files."""
        pieces = []
        position = first
        index = bisect.bisect_right(self.starts, first) - 1
        while position < stop:
            extent = self.extents[index]
            low = position - extent.start
            high = min(stop, extent.start + extent.length) - extent.start
            pieces.append(self._read_slice(handle.get(extent.path), extent, low, high))
            position += high - low
            index += 1
        return Batch.concatenate(pieces)

    def metadata(self) -> RunMetadata:
        """What the first file says: each field's dataset, and the entries the spec's ``metadata`` names."""
        return describe_files(self.first_path, self.datasets, self.time_dataset, self.entries)

    def _read_slice(self, h5: h5py.File, extent: FileExtent, low: int, high: int) -> Batch:
        seq = np.arange(extent.start + low, extent.start + high, dtype=np.int64)
        if self.time_dataset is None:
            time = np.full(len(seq), np.nan)
        else:
            time = np.asarray(h5[self.time_dataset][low:high], dtype=np.float64)
        return Batch(seq, time, {name: h5[dataset][low:high] for name, dataset in self.datasets.items()})


class HDF5Source(SourceSpec):
    """Events from HDF5 files, the files concatenated along axis 0 in the order given.

    Attributes:
        files: paths or glob patterns (``**`` included); each pattern's matches are sorted.
        datasets: output field name -> dataset path; every dataset of a file must have the
            same length along axis 0, and each field the same dtype (byte order aside) and frame
            shape in all files. Fields stream in the dataset's dtype, little-endian.
            Default: the CXI detector data, ``{"data": "/entry_1/data_1/data"}``.
        time_dataset: a one-dimensional dataset of event times (seconds since the Unix epoch,
            read as float64). Without it, every event's time is NaN (the files say none).
        events_per_read: events per block (each rank reads whole blocks, one read per block);
            0 takes the chunk length along axis 0 of the first dataset in the first file,
            or 16 when that dataset is not chunked.
        max_events: read at most this many events (the first ones).
        metadata: description key -> where the first file holds it: ``/dataset`` (scalar or
            short 1-D), ``/path@attribute`` or ``@attribute``. Keys ``facility``,
            ``instrument``, ``experiment``, ``sample``, ``run``; ``FIELD.distance`` and
            ``FIELD.pixel_size`` (or ``FIELD.x_pixel_size`` with ``FIELD.y_pixel_size``),
            converted to metres by the dataset's ``units``; any other key is a per-run constant
            with its dataset's ``units``, unless it looks like a mistyped key, which is refused
            (:mod:`beamstream.sources.hdf5_metadata`). Each field's entry says its dataset, and
            a mask's convention; without ``time_dataset`` the description says ``times: none``.
    """

    type: Literal["hdf5"] = "hdf5"
    files: list[ReadPattern] = Field(min_length=1)
    datasets: dict[str, str] = Field(default_factory=lambda: {"data": CXI_DATA}, min_length=1)
    time_dataset: str | None = None
    events_per_read: int = Field(0, ge=0, le=MAX_EVENTS_PER_BATCH)
    max_events: int | None = Field(None, ge=0, le=MAX_EVENTS)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=1024)

    @field_validator("files")
    @classmethod
    def _bounded_patterns(cls, files: list[str]) -> list[str]:
        for pattern in files:
            if GLOB_CHARS & set(pattern) and not _literal_folder(os.path.expanduser(pattern)):
                raise ValueError(f"{pattern!r} would search from the top of the file system (or the working "
                                 "folder): start a pattern with the folder the files are in, e.g. "
                                 "/data/xpptut15/r0014/*.h5")
        return files

    @model_validator(mode="after")
    def _known_metadata_keys(self) -> HDF5Source:
        check_keys(self.metadata, self.datasets)
        return self

    def field_names(self) -> set[str]:
        return set(self.datasets)

    def open(self) -> HDF5Reader:
        """Check every file and dataset now, so that ``read`` does not fail half way.

        Raises SourceError for a missing file, a file that is not HDF5, a missing dataset
        (listing those that exist), datasets whose lengths, dtypes or shapes disagree, or a
        block of ``events_per_read`` events that would not fit in the memory available now.
        """
        extents: list[FileExtent] = []
        layouts: list[FileLayout] = []
        start = 0
        for path in expand_files(self.files):
            layout = inspect_file(path, self.datasets, self.time_dataset)
            if layouts:
                _check_same_fields(layouts[0], extents[0].path, layout, path)
            layouts.append(layout)
            extents.append(FileExtent(path=path, start=start, length=layout.length))
            start += layout.length
        total = start if self.max_events is None else min(start, self.max_events)
        block = self.events_per_read or layouts[0].chunk or DEFAULT_BLOCK
        check_memory(block * layouts[0].event_bytes(), f"the hdf5 source's reads of {block:,} events",
                     "lower events_per_read")
        nonempty = [extent for extent in extents if extent.length]
        reader = HDF5Reader(nonempty, dict(self.datasets), self.time_dataset, block, total, dict(self.metadata),
                            extents[0].path)
        reader.metadata()  # a metadata entry that cannot be read fails now, not at the first message
        return reader


def _check_same_fields(first: FileLayout, first_path: str, layout: FileLayout, path: str) -> None:
    """SourceError unless every field has the same dtype (as streamed) and frame shape in both files."""
    for name, (dtype, shape) in layout.fields.items():
        if (dtype, shape) != first.fields[name]:
            first_dtype, first_shape = first.fields[name]
            raise SourceError(
                f"hdf5 source: field {name!r} is {dtype} frames of {shape} in {path} but {first_dtype} "
                f"frames of {first_shape} in {first_path}; all files must agree"
            )
