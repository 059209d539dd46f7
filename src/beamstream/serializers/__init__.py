"""Serializers: how a batch's arrays become payload frames, and back."""

from __future__ import annotations

from typing import Any

import numpy as np

from beamstream.plugins import plugin


def decode_payload(message: Any) -> dict[str, np.ndarray]:
    """The arrays of a data message, decoded by the serializer its header names."""
    codec = plugin("serializers", message.serializer)().build()
    return codec.decode(message.fields, message.payload)
