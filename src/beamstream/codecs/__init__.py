"""Codecs: turn a batch's arrays into payload frames and back, found by the serializer name a message carries.

A codec is the runtime half of a serializer: the ``serializer`` spec (a plugin, see
:mod:`beamstream.plugins`) builds one to encode, and a reader finds the one that decodes a
message by the name in its header, through the entry point group ``beamstream.codecs``. So
reading a stream needs neither the spec models nor pydantic: a facility that adds a
serializer registers its codec class there too (decoding needs no options: the class is
called without arguments).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from beamstream.errors import MissingDependency, WireFormatError


@cache
def decoder(name: str) -> Any:
    """A codec that decodes payloads of serializer ``name``.

    Raises WireFormatError naming the installed codecs when none is registered under ``name``,
    MissingDependency when its module cannot be imported.
    """
    matches = [ep for ep in entry_points(group="beamstream.codecs") if ep.name == name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in entry_points(group="beamstream.codecs")})) or "(none installed)"
        raise WireFormatError(f"message encoded by serializer {name!r}, which this reader cannot decode; "
                              f"installed: {known}")
    try:
        return matches[0].load()()
    except ImportError as exc:
        raise MissingDependency(f"the codec {name!r} could not be loaded: {exc}; "
                                f"install the package that provides it ({matches[0].value})") from exc


def decode_payload(message: Any) -> dict[str, np.ndarray]:
    """The arrays of a data message, decoded by the codec of the serializer its header names."""
    return decoder(message.serializer).decode(message.fields, message.payload)
