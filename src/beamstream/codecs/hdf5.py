"""``hdf5``: each message one HDF5 file image, one dataset per field shaped (batch, ...).

The payload's frames, concatenated, open with plain ``h5py.File(io.BytesIO(b"".join(frames)))`` (with
``import hdf5plugin`` for the bitshuffle, zstd and zfp filters). Uncompressed, the frames are the file's fixed
bytes and the arrays' own buffers (:mod:`beamstream.codecs.hdf5_image`); compressed, one frame. Sequence numbers and times are stored too, in
``/_beamstream/seq`` and ``/_beamstream/time``, so a saved message describes itself.
A field is the dataset of its name at the root, unless :class:`Storage` gives it a path
(``image`` → ``/data/data``); the paths are then recorded as JSON in the ``paths`` attribute of
``/_beamstream``, where the reader finds them. h5py is imported only when a file is written or read.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beamstream.batch import Batch
from beamstream.codecs.hdf5_image import FramesFile, ImageLayout, Layouts, ReadLayouts, view_of
from beamstream.errors import WireFormatError
from beamstream.wire import FieldInfo

META_GROUP = "_beamstream"
SEQ_PATH, TIME_PATH = f"{META_GROUP}/seq", f"{META_GROUP}/time"
LIBVER = ("earliest", "v110")
"""HDF5 format bounds of every file beamstream writes: readable by HDF5 1.10 (Debian's h5ls/h5dump) and
later, whatever HDF5 h5py is built on (``"latest"`` with HDF5 2.0 gives files that 1.10 and 1.14 cannot read)."""
ZFP_DTYPES = frozenset(map(np.dtype, ("<f4", "<f8", "<i4", "<i8")))  # what zfp compresses
PATHS_ATTRIBUTE = "paths"  # of META_GROUP: {field: dataset path}, JSON, where a field is not at /NAME
MAX_PATHS_TEXT = 1 << 16


@dataclass(frozen=True)
class Storage:
    """How fields are stored: ``filters``, the h5py ``create_dataset`` keywords of the compression (hdf5plugin's
    for bitshuffle, zstd and zfp; empty: none), and ``paths``, a dataset path for some fields (the others: their
    name at the root). Made from a spec by :class:`beamstream.serializers.storage.HDF5Storage`."""

    filters: Mapping[str, Any] = field(default_factory=dict)
    paths: Mapping[str, str] = field(default_factory=dict)
    zfp: bool = False  # the filters are zfp's: only ZFP_DTYPES

    def path(self, name: str) -> str:
        return self.paths.get(name, name)

    def check(self, arrays: Mapping[str, np.ndarray]) -> None:
        """ValueError naming a field these filters cannot store (zfp: not float32/64 nor int32/64)."""
        for name, array in arrays.items():
            if self.zfp and array.dtype.newbyteorder("<") not in ZFP_DTYPES:
                raise ValueError(f"zfp compresses float32, float64, int32 and int64 arrays; field {name!r} is "
                                 f"{array.dtype}: convert it first (a cast step) or choose another compression")


NO_STORAGE = Storage()


def write_batch(target: Any, seq: np.ndarray, time: np.ndarray, arrays: dict[str, np.ndarray],
                storage: Storage = NO_STORAGE) -> None:
    """Write one batch into an open ``h5py.File`` (or group) ``target``, as ``storage`` says."""
    storage.check(arrays)
    for name, array in arrays.items():
        chunks = (1, *array.shape[1:]) if storage.filters and array.ndim > 1 else None
        target.create_dataset(storage.path(name), data=array, chunks=chunks, **storage.filters)
    meta = target.require_group(META_GROUP)
    meta.create_dataset("seq", data=seq)
    meta.create_dataset("time", data=time)
    if storage.paths:
        meta.attrs[PATHS_ATTRIBUTE] = json.dumps({name: storage.path(name) for name in arrays})


def batch_to_hdf5_bytes(seq: np.ndarray, time: np.ndarray, arrays: dict[str, np.ndarray],
                        storage: Storage = NO_STORAGE) -> bytes:
    """An HDF5 file image holding one batch."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w", libver=LIBVER) as h5:
        write_batch(h5, seq, time, arrays, storage)
    return buffer.getbuffer()


class HDF5Codec:
    """Encodes a batch as one HDF5 file image, stored as ``storage`` says: uncompressed, as frames of the file's
    fixed bytes and the arrays' own buffers (:mod:`beamstream.codecs.hdf5_image`); compressed, in one frame that
    h5py wrote."""

    name = "hdf5"

    def __init__(self, storage: Storage = NO_STORAGE) -> None:
        self.storage = storage
        self.layouts: Layouts[ImageLayout | None] = Layouts()
        self.read_layouts = ReadLayouts()

    def encode(self, batch: Batch) -> list[Any]:
        if not self.storage.filters:
            key = (len(batch.seq), tuple((name, array.dtype.str, array.shape) for name, array in batch.data.items()))
            layout = self.layouts.get(key, lambda: self._layout(batch))
            if layout is not None:
                by_path = {self.storage.path(name): array for name, array in batch.data.items()}
                return layout.frames({**by_path, SEQ_PATH: batch.seq, TIME_PATH: batch.time})
        return [batch_to_hdf5_bytes(batch.seq, batch.time, batch.data, self.storage)]

    def _layout(self, batch: Batch) -> ImageLayout | None:
        """The file image of every batch shaped like ``batch``, written once (with zeros)."""
        zeros = {name: np.zeros_like(array) for name, array in batch.data.items()}
        paths = [self.storage.path(name) for name in zeros] + [SEQ_PATH, TIME_PATH]
        return ImageLayout.written_by(
            lambda h5: write_batch(h5, np.zeros_like(batch.seq), np.zeros_like(batch.time), zeros, self.storage),
            {path: path for path in paths}, LIBVER)

    def decode(self, fields: Sequence[FieldInfo], frames: Sequence[Any]) -> dict[str, np.ndarray]:
        """The arrays of an hdf5 payload: its frames, concatenated, are the file. A contiguous uncompressed dataset
        within one frame is a read-only view of it; the others are read (and decompressed) by h5py. A payload whose
        frames but its data frames are those of the last one of its layout is not parsed again."""
        import h5py
        import hdf5plugin  # noqa: F401  (registers the bitshuffle and zstd filters)

        if not frames:
            raise WireFormatError("an hdf5 message has at least one payload frame, got none")
        file = FramesFile(frames)
        key = tuple(fields)
        known = self.read_layouts.arrays(key, file)  # the file of the last message of this layout but for its data
        if known is not None:
            return known
        try:
            with h5py.File(file, "r") as h5:
                paths = _paths(h5)
                datasets = {info.name: _checked_dataset(h5, info, paths.get(info.name, info.name)) for info in fields}
                found = {name: view_of(file, dataset) for name, dataset in datasets.items()}
                arrays = {name: dataset[()] if found[name] is None else found[name].array
                          for name, dataset in datasets.items()}
                others = [view_of(file, h5[path]) for path in (SEQ_PATH, TIME_PATH)
                          if isinstance(h5.get(path, getlink=True), h5py.HardLink)]
        except WireFormatError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise WireFormatError(f"hdf5 payload cannot be read: {exc}") from None
        self.read_layouts.learn(key, file, found, others)
        return arrays


MAX_DECODED_BYTES = 1 << 32
"""The most one hdf5 message may hold once decompressed: a small payload declaring more is refused."""


def _paths(h5: Any) -> dict[str, str]:
    """The fields' dataset paths a received file image records (:data:`PATHS_ATTRIBUTE`; none: every field at
    its name), checked to be a JSON object of texts."""
    meta = h5.get(META_GROUP)
    text = None if meta is None else meta.attrs.get(PATHS_ATTRIBUTE)
    if text is None:
        return {}
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or len(text) > MAX_PATHS_TEXT:
        raise WireFormatError(f"hdf5 payload: /{META_GROUP}.{PATHS_ATTRIBUTE} is not a JSON text of at most "
                              f"{MAX_PATHS_TEXT} characters")
    try:
        paths = json.loads(text)
    except ValueError:
        paths = None
    if not isinstance(paths, dict) or not all(isinstance(value, str) and value for value in paths.values()):
        raise WireFormatError(f"hdf5 payload: /{META_GROUP}.{PATHS_ATTRIBUTE} is not a JSON object of dataset paths")
    return paths


def _checked_dataset(h5: Any, info: FieldInfo, path: str) -> Any:
    """Dataset ``path`` (field ``info.name``) of a received file image, after checking that reading it reads only
    the message: a hard link to a dataset stored in the file (no external link, external storage or virtual
    dataset), of the dtype and shape the header declares, no bigger than :data:`MAX_DECODED_BYTES`."""
    import h5py

    try:
        link = h5.get(path, getlink=True)
    except (KeyError, ValueError, TypeError):
        link = None
    if not isinstance(link, h5py.HardLink) or any(not isinstance(h5.get(parent, getlink=True), h5py.HardLink)
                                                  for parent in _parents(path)):
        raise WireFormatError(f"hdf5 payload: {info.name!r} ({path}) is a "
                              f"{type(link).__name__ if link else 'missing link'} or under one; "
                              "only datasets stored in the message are read")
    dataset = h5[path]
    if not isinstance(dataset, h5py.Dataset) or dataset.external or dataset.is_virtual:
        raise WireFormatError(f"hdf5 payload: {info.name!r} is not a dataset stored in the message "
                              "(external storage and virtual datasets are refused)")
    if dataset.dtype != np.dtype(info.dtype) or dataset.shape != tuple(info.shape):
        raise WireFormatError(f"hdf5 payload: {info.name!r} is {dataset.dtype} {dataset.shape}, "
                              f"the header says {info.dtype} {tuple(info.shape)}")
    if dataset.size * dataset.dtype.itemsize > MAX_DECODED_BYTES:
        raise WireFormatError(f"hdf5 payload: {info.name!r} declares {dataset.size * dataset.dtype.itemsize:,} bytes; "
                              f"a message holds at most {MAX_DECODED_BYTES:,}")
    _check_stored(dataset, info.name)
    return dataset


def _parents(path: str) -> list[str]:
    """The groups above dataset ``path``: ``/a/b/c`` → ``/a``, ``/a/b``."""
    parts = [part for part in path.split("/") if part]
    return ["/" + "/".join(parts[:depth]) for depth in range(1, len(parts))]


def _check_stored(dataset: Any, name: str) -> None:
    """WireFormatError unless the message stores every element of ``dataset``: a dataset whose storage (or some of
    whose chunks) was never written reads as its fill value, so a payload of a few bytes could make its reader
    allocate gigabytes."""
    if dataset.size == 0:
        return
    if dataset.chunks is None:
        stored, expected = dataset.id.get_storage_size(), dataset.size * dataset.dtype.itemsize
        complete = stored == expected
    else:
        expected = math.prod(-(-extent // chunk) for extent, chunk in zip(dataset.shape, dataset.chunks))
        stored = dataset.id.get_num_chunks()
        complete = stored == expected
    if not complete:
        unit = "chunks" if dataset.chunks is not None else "bytes"
        raise WireFormatError(f"hdf5 payload: {name!r} stores {stored:,} of its {expected:,} {unit}: a message "
                              "must hold every element it declares (unwritten storage reads as fill values)")
