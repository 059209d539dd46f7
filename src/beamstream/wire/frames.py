"""Frames as ZeroMQ and NATS hand them over: the bytes behind a frame, and the payload checksum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
import xxhash

from beamstream.errors import WireFormatError

T = TypeVar("T")


def frame_buffer(frame: Any) -> Any:
    """The buffer behind ``frame``: a ``zmq.Frame``'s memoryview, or the bytes-like object itself."""
    return frame.buffer if hasattr(frame, "buffer") else frame


def frame_bytes(frame: Any) -> int:
    """How many bytes ``frame`` holds."""
    return memoryview(frame_buffer(frame)).nbytes


def payload_checksum(frames: Sequence[Any]) -> int:
    """xxh3-64 of the payload frames, in order."""
    digest = xxhash.xxh3_64()
    for frame in frames:
        digest.update(frame_buffer(frame))
    return digest.intdigest()


def decode(decoder: msgspec.msgpack.Decoder[T], raw: Any, what: str) -> T:
    """``raw`` decoded by ``decoder``; WireFormatError saying that ``what`` is not msgpack, or how it is malformed."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise WireFormatError(f"malformed {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise WireFormatError(f"{what} is not msgpack: {exc}") from None
