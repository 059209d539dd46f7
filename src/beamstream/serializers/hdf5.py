"""``hdf5`` serializer: one in-memory HDF5 file per message (the codec: :mod:`beamstream.codecs.hdf5`)."""

from __future__ import annotations

from typing import Literal

from beamstream.codecs.hdf5 import HDF5Codec
from beamstream.serializers.storage import HDF5Storage
from beamstream.stages import SerializerSpec


class HDF5Serializer(HDF5Storage, SerializerSpec):
    """One in-memory HDF5 file per message, its fields compressed and placed as
    :class:`~beamstream.serializers.storage.HDF5Storage` says (``compression``, ``level``, ``shuffle``, ``zfp``,
    ``paths``)."""

    type: Literal["hdf5"] = "hdf5"

    def build(self) -> HDF5Codec:
        return HDF5Codec(self.storage())
