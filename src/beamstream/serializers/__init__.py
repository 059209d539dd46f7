"""Serializers: how a batch's arrays become payload frames, and back."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from beamstream.plugins import plugin


@cache
def decoder(name: str) -> Any:
    """The codec that decodes payloads of serializer ``name`` (decoding needs no options)."""
    return plugin("serializers", name)().build()


def decode_payload(message: Any) -> dict[str, np.ndarray]:
    """The arrays of a data message, decoded by the serializer its header names."""
    return decoder(message.serializer).decode(message.fields, message.payload)
