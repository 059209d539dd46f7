"""``simplon`` serializer: each event a DECTRIS Stream V2 (SIMPLON 1.8) image message (the codec:
:mod:`beamstream.codecs.simplon`); with the ``plain`` sink, a DECTRIS series any Stream V2 client reads.

Needs the ``simplon`` extra (cbor2, bitshuffle): ``pip install 'beamstream[simplon]'``. docs/simplon.md says what
each message holds and where its fields come from.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from beamstream.errors import MissingDependency, needs_extra
from beamstream.stages import SerializerSpec, each_once

try:
    from beamstream.codecs.simplon import SimplonCodec
except ImportError as exc:
    raise MissingDependency(needs_extra("the simplon serializer", "simplon", cause=exc)) from None

FieldName = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class SimplonSerializer(SerializerSpec):
    """Each event one image message: its ``channels`` compressed (bitshuffle + LZ4, as DECTRIS detectors send
    them), its other fields uncompressed in the image's ``user_data``.

    Attributes:
        channels: the fields sent as the image's channels, in order: 2-D frames per event, all of one shape and
            dtype (DECTRIS detectors send uint8, uint16 or uint32; a cast step converts).
    """

    type: Literal["simplon"] = "simplon"
    channels: list[FieldName] = Field(min_length=1, max_length=64)

    @field_validator("channels")
    @classmethod
    def _distinct(cls, channels: list[str]) -> list[str]:
        return each_once(channels, "channels")

    def build(self) -> SimplonCodec:
        return SimplonCodec(self.channels)
