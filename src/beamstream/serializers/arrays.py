"""``arrays`` serializer: raw array buffers (the codec: :mod:`beamstream.codecs.arrays`)."""

from __future__ import annotations

from typing import Literal

from beamstream.codecs.arrays import ArraysCodec
from beamstream.stages import SerializerSpec


class ArraysSerializer(SerializerSpec):
    """Raw array buffers with a msgpack header: the fastest encoding, no compression."""

    type: Literal["arrays"] = "arrays"

    def build(self) -> ArraysCodec:
        return ArraysCodec()
