"""The wire format (docs/wire-format.md): multipart messages of a msgpack header plus payload frames.

A data message is ``[header, payload0, payload1, ...]``; an end-of-stream message is
``[header]``. The header is a msgpack map whose ``v`` is :data:`WIRE_VERSION`. Big payload
frames go out without copies; received arrays are read-only views that keep their frame alive.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import xxhash

from beamstream.batch import Batch, Share
from beamstream.errors import ChecksumMismatch, WireFormatError
from beamstream.stages import FieldInfo

WIRE_VERSION = 1
DATA = "data"
END = "end"


def payload_checksum(frames: Sequence[Any]) -> int:
    """xxh3-64 of the payload frames, in order."""
    digest = xxhash.xxh3_64()
    for frame in frames:
        digest.update(frame)
    return digest.intdigest()


@dataclass(slots=True)
class DataMessage:
    """One batch of events from one producer, with the header fields of docs/wire-format.md."""

    stream: str
    rank: int
    producers: int
    index: int
    share: Share
    seq: np.ndarray
    time: np.ndarray
    serializer: str
    fields: list[FieldInfo]
    payload: list[Any]
    checksum: int | None = None
    sent: float = 0.0

    @property
    def first_seq(self) -> int:
        return int(self.seq[0])

    @property
    def last_seq(self) -> int:
        return int(self.seq[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of payload."""
        return sum(memoryview(frame).nbytes for frame in self.payload)

    def to_frames(self) -> list[Any]:
        """Header plus payload frames, ready for ``send_multipart(copy=False)``; stamps ``sent``."""
        self.sent = time.time()
        header = {
            "v": WIRE_VERSION,
            "kind": DATA,
            "stream": self.stream,
            "rank": self.rank,
            "producers": self.producers,
            "index": self.index,
            "share": self.share.to_wire(),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "seq": np.ascontiguousarray(self.seq, dtype="<i8").tobytes(),
            "time": np.ascontiguousarray(self.time, dtype="<f8").tobytes(),
            "serializer": self.serializer,
            "fields": [info.to_wire() for info in self.fields],
            "checksum": self.checksum,
            "sent": self.sent,
        }
        return [msgpack.packb(header), *self.payload]


@dataclass(slots=True)
class EndMessage:
    """A producer's last message: what it sent, and whether it finished its share."""

    stream: str
    rank: int
    producers: int
    share: Share
    messages: int
    events: int
    last_seq: int | None
    status: str = "ok"
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_frames(self) -> list[Any]:
        header = {
            "v": WIRE_VERSION,
            "kind": END,
            "stream": self.stream,
            "rank": self.rank,
            "producers": self.producers,
            "share": self.share.to_wire(),
            "messages": self.messages,
            "events": self.events,
            "last_seq": self.last_seq,
            "status": self.status,
            "reason": self.reason,
            "extra": self.extra,
        }
        return [msgpack.packb(header)]


def _buffer(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def parse_message(frames: Sequence[Any], verify: bool = True) -> DataMessage | EndMessage:
    """Decode received frames (bytes or zmq.Frame) into a message.

    Raises WireFormatError on anything that is not a version-1 beamstream message and
    ChecksumMismatch when ``verify`` and the payload does not match its checksum.
    """
    if not frames:
        raise WireFormatError("empty message")
    try:
        header = msgpack.unpackb(_buffer(frames[0]))
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireFormatError(f"message header is not msgpack: {exc}") from None
    if not isinstance(header, dict) or "v" not in header:
        raise WireFormatError("message header is not a beamstream header (no 'v' key)")
    if header["v"] != WIRE_VERSION:
        raise WireFormatError(
            f"message uses wire format version {header['v']}; this beamstream reads version {WIRE_VERSION}: "
            "run producer and consumer with the same beamstream release"
        )
    try:
        if header["kind"] == END:
            return EndMessage(
                stream=header["stream"],
                rank=header["rank"],
                producers=header["producers"],
                share=Share.from_wire(header["share"]),
                messages=header["messages"],
                events=header["events"],
                last_seq=header["last_seq"],
                status=header["status"],
                reason=header["reason"],
                extra=header.get("extra", {}),
            )
        if header["kind"] != DATA:
            raise WireFormatError(f"unknown message kind {header['kind']!r}")
        payload = [_buffer(frame) for frame in frames[1:]]
        message = DataMessage(
            stream=header["stream"],
            rank=header["rank"],
            producers=header["producers"],
            index=header["index"],
            share=Share.from_wire(header["share"]),
            seq=np.frombuffer(header["seq"], dtype="<i8"),
            time=np.frombuffer(header["time"], dtype="<f8"),
            serializer=header["serializer"],
            fields=[FieldInfo.from_wire(value) for value in header["fields"]],
            payload=payload,
            checksum=header["checksum"],
            sent=header["sent"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WireFormatError(f"malformed message header: {exc!r}") from None
    if verify and message.checksum is not None:
        actual = payload_checksum(payload)
        if actual != message.checksum:
            raise ChecksumMismatch(
                f"message {message.index} from producer {message.rank} (events {message.first_seq}-"
                f"{message.last_seq}): payload checksum {actual:#x} != header {message.checksum:#x}"
            )
    return message


def message_from_batch(batch: Batch, serializer: Any, *, stream: str, rank: int, producers: int, index: int, share: Share) -> DataMessage:
    """Encode ``batch`` with ``serializer`` into the ``index``-th data message of a producer."""
    payload = serializer.encode(batch)
    return DataMessage(
        stream=stream,
        rank=rank,
        producers=producers,
        index=index,
        share=share,
        seq=batch.seq,
        time=batch.time,
        serializer=serializer.name,
        fields=[FieldInfo.of(name, array) for name, array in batch.data.items()],
        payload=payload,
        checksum=payload_checksum(payload),
    )
