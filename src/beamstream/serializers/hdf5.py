"""``hdf5`` serializer: one in-memory HDF5 file per message (the codec: :mod:`beamstream.codecs.hdf5`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from beamstream.codecs.hdf5 import Compression, HDF5Codec
from beamstream.stages import SerializerSpec


class HDF5Serializer(SerializerSpec):
    """One in-memory HDF5 file per message.

    Attributes:
        compression: none, gzip, bitshuffle_lz4 or zstd (the last two through hdf5plugin).
        level: compression level for gzip (0-9) or zstd (1-22); default 4 and 3.
    """

    type: Literal["hdf5"] = "hdf5"
    compression: Compression = "none"
    level: int | None = Field(None, ge=0, le=22)

    def build(self) -> HDF5Codec:
        return HDF5Codec(self.compression, self.level)
