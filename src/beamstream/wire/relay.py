"""The relay's framing (docs/relay.md): a ZeroMQ multipart message as one binary WebSocket message.

The service's relay (:mod:`beamstream.service.relay`) and its reader
(:class:`~beamstream.client.transports.relay.RelayTransport`) both speak it: the frame count (uint32,
little-endian), each frame's length (uint64, little-endian), then the frames back to back
(:func:`join_frames`, :func:`split_frames`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from beamstream.errors import WireFormatError
from beamstream.wire.frames import frame_buffer

COUNT = struct.Struct("<I")
LENGTH_BYTES = 8


def join_frames(frames: Sequence[Any]) -> bytes:
    """The relay message carrying ``frames`` (bytes, memoryviews or ``zmq.Frame``s), in order."""
    buffers = [frame_buffer(frame) for frame in frames]
    lengths = [memoryview(buffer).nbytes for buffer in buffers]
    return b"".join([COUNT.pack(len(lengths)), struct.pack(f"<{len(lengths)}Q", *lengths), *buffers])


def split_frames(message: bytes) -> list[memoryview]:
    """The frames of relay ``message``, as read-only views of it (no copy).

    Raises WireFormatError for a message that is not one: no frame, a length table longer than
    the message, or lengths that do not add up to exactly the bytes that follow it.
    """
    view = memoryview(message).toreadonly()
    if len(view) < COUNT.size:
        raise WireFormatError(f"relay message of {len(view)} bytes has no frame count")
    (count,) = COUNT.unpack_from(view)
    start = COUNT.size + LENGTH_BYTES * count
    if count == 0 or start > len(view):
        raise WireFormatError(f"relay message of {len(view)} bytes cannot hold {count} frames")
    lengths = struct.unpack_from(f"<{count}Q", view, COUNT.size)
    if sum(lengths) != len(view) - start:
        raise WireFormatError(f"relay message: its {count} frames add up to {sum(lengths)} bytes, "
                              f"{len(view) - start} follow the length table")
    frames = []
    for length in lengths:
        frames.append(view[start:start + length])
        start += length
    return frames
