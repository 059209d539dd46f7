"""``arrays``: each field's raw C-order bytes as its own frame, described by the header.

No copy on either side for contiguous arrays: the sender hands the array's buffer to ZeroMQ,
the receiver wraps the frame with ``np.frombuffer`` (a read-only view).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from beamstream.batch import Batch
from beamstream.errors import WireFormatError
from beamstream.wire import FieldInfo


class ArraysCodec:
    """Encodes a batch as one raw buffer per field."""

    name = "arrays"

    def encode(self, batch: Batch) -> list[Any]:
        return [np.ascontiguousarray(array) for array in batch.data.values()]

    def decode(self, fields: Sequence[FieldInfo], frames: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(fields) != len(frames):
            raise WireFormatError(f"header lists {len(fields)} fields but {len(frames)} payload frames arrived")
        arrays = {}
        for info, frame in zip(fields, frames, strict=True):
            dtype = np.dtype(info.dtype)
            expected = int(np.prod(info.shape)) * dtype.itemsize
            if memoryview(frame).nbytes != expected:
                raise WireFormatError(
                    f"field {info.name!r}: {memoryview(frame).nbytes} bytes, header says {expected} ({info.dtype} {info.shape})"
                )
            array = np.frombuffer(frame, dtype=dtype).reshape(info.shape)
            array.setflags(write=False)
            arrays[info.name] = array
        return arrays
