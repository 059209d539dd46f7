"""``hdf5``: each message one in-memory HDF5 file, one dataset per field shaped (batch, ...).

The payload opens with plain ``h5py.File(io.BytesIO(payload))`` (with ``import hdf5plugin``
for the bitshuffle/zstd filters). Sequence numbers and times are stored too, in
``/_beamstream/seq`` and ``/_beamstream/time``, so a saved message describes itself.
h5py is imported only when a file is written or read.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from beamstream.batch import Batch
from beamstream.errors import WireFormatError
from beamstream.wire import FieldInfo

META_GROUP = "_beamstream"
LIBVER = ("earliest", "v110")
"""HDF5 format bounds of every file beamstream writes: readable by HDF5 1.10 (Debian's h5ls/h5dump) and
later, whatever HDF5 h5py is built on (``"latest"`` with HDF5 2.0 gives files that 1.10 and 1.14 cannot read)."""
Compression = Literal["none", "gzip", "bitshuffle_lz4", "zstd"]


def filter_options(compression: Compression, level: int | None) -> dict[str, Any]:
    """h5py create_dataset keywords for ``compression`` at ``level`` (None: the filter's default)."""
    import hdf5plugin

    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4 if level is None else level}
    if compression == "bitshuffle_lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    return dict(hdf5plugin.Zstd(clevel=3 if level is None else level))


def write_batch(target: Any, seq: np.ndarray, time: np.ndarray, arrays: dict[str, np.ndarray],
                compression: Compression = "none", level: int | None = None) -> None:
    """Write one batch into an open ``h5py.File`` (or group) ``target``."""
    options = filter_options(compression, level)
    for name, array in arrays.items():
        chunks = (1, *array.shape[1:]) if options and array.ndim > 1 else None
        target.create_dataset(name, data=array, chunks=chunks, **options)
    meta = target.require_group(META_GROUP)
    meta.create_dataset("seq", data=seq)
    meta.create_dataset("time", data=time)


def batch_to_hdf5_bytes(seq: np.ndarray, time: np.ndarray, arrays: dict[str, np.ndarray],
                        compression: Compression = "none", level: int | None = None) -> bytes:
    """An HDF5 file image holding one batch."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w", libver=LIBVER) as h5:
        write_batch(h5, seq, time, arrays, compression, level)
    return buffer.getbuffer()


class HDF5Codec:
    """Encodes a batch as one in-memory HDF5 file."""

    name = "hdf5"

    def __init__(self, compression: Compression = "none", level: int | None = None) -> None:
        self.compression = compression
        self.level = level

    def encode(self, batch: Batch) -> list[Any]:
        return [batch_to_hdf5_bytes(batch.seq, batch.time, batch.data, self.compression, self.level)]

    def decode(self, fields: Sequence[FieldInfo], frames: Sequence[Any]) -> dict[str, np.ndarray]:
        import h5py
        import hdf5plugin  # noqa: F401  (registers the bitshuffle and zstd filters)

        if len(frames) != 1:
            raise WireFormatError(f"an hdf5 message has one payload frame, got {len(frames)}")
        try:
            with h5py.File(io.BytesIO(frames[0]), "r") as h5:
                datasets = {info.name: _checked_dataset(h5, info) for info in fields}
                return {name: dataset[()] for name, dataset in datasets.items()}
        except WireFormatError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise WireFormatError(f"hdf5 payload cannot be read: {exc}") from None


MAX_DECODED_BYTES = 1 << 32
"""The most one hdf5 message may hold once decompressed: a small payload declaring more is refused."""


def _checked_dataset(h5: Any, info: FieldInfo) -> Any:
    """Dataset ``info.name`` of a received file image, after checking that reading it reads only the message:
    a hard link to a dataset stored in the file (no external link, external storage or virtual dataset),
    of the dtype and shape the header declares, no bigger than :data:`MAX_DECODED_BYTES`."""
    import h5py

    link = h5.get(info.name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise WireFormatError(f"hdf5 payload: {info.name!r} is a {type(link).__name__ if link else 'missing link'}; "
                              "only datasets stored in the message are read")
    dataset = h5[info.name]
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
