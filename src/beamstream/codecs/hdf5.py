"""``hdf5``: each message one in-memory HDF5 file, one dataset per field shaped (batch, ...).

The payload opens with plain ``h5py.File(io.BytesIO(payload))`` (with ``import hdf5plugin``
for the bitshuffle/zstd filters). Sequence numbers and times are stored too, in
``/_beamstream/seq`` and ``/_beamstream/time``, so a saved message describes itself.
h5py is imported only when a file is written or read.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from beamstream.batch import Batch
from beamstream.errors import WireFormatError
from beamstream.wire import FieldInfo

META_GROUP = "_beamstream"
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
    with h5py.File(buffer, "w", libver="latest") as h5:
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
                return {info.name: h5[info.name][()] for info in fields}
        except (OSError, KeyError) as exc:
            raise WireFormatError(f"hdf5 payload cannot be read: {exc}") from None
