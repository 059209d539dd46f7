"""Data and end-of-stream messages (docs/wire-format.md): a msgpack header plus payload frames.

A data message is ``[header, payload0, payload1, ...]``; an end-of-stream message is
``[header]``. The header is a msgpack map whose ``v`` is :data:`WIRE_VERSION`; its keys and
their types are the fields of :class:`DataHeader` and :class:`EndMessage`, in that order, and
every received header is validated against them before anything uses it. Big payload frames
go out without copies; received arrays are read-only views that keep their frame alive.

A message of a sealed stream (``to_frames(key)``; docs/wire-format.md, "Sealed messages") is
``[header, C_0, ..., C_{n-1}, S]``: the header's ``seal`` holds a fresh nonce, the payload frames
are encrypted, and the seal frame ``S`` authenticates the whole (:mod:`beamstream.wire.sealing`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import numpy as np

from beamstream.batch import Batch, NonNegative, ProducerCount, Seq, Share
from beamstream.errors import ChecksumMismatch, SealRefused, WireFormatError
from beamstream.wire.frames import decode, frame_buffer, frame_bytes, payload_checksum
from beamstream.wire.metadata import RunMetadata
from beamstream.wire.sealing import NONCE_BYTES, check_admitted, new_nonce, open_payload, seal_payload

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey, StreamKey

WIRE_VERSION = 1
Checksum = Annotated[int, msgspec.Meta(ge=0)]  # msgpack holds at most uint64
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
MAX_FIELDS = 1024  # arrays in one message
MAX_DIMENSIONS = 32  # numpy's limit is 64
Seal = Annotated[bytes, msgspec.Meta(max_length=NONCE_BYTES)]  # b"" (not sealed) or the nonce
_NONE = np.empty(0, dtype="<i8")
_NONE.setflags(write=False)


class FieldInfo(msgspec.Struct, frozen=True, array_like=True):
    """Name, dtype and shape (batch axis first) of one array in a message; ``[name, dtype, shape]`` on the wire."""

    name: Name
    dtype: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    shape: Annotated[tuple[NonNegative, ...], msgspec.Meta(min_length=1, max_length=MAX_DIMENSIONS)]

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> FieldInfo:
        return cls(name=name, dtype=array.dtype.str, shape=tuple(array.shape))


class DataHeader(msgspec.Struct, frozen=True, omit_defaults=True):
    """Header of a data message, key by key (docs/wire-format.md, "Header of a data message").

    ``seq`` and ``time`` are the raw little-endian int64 and float64 arrays of the events.
    ``metadata``, the stream's description, is in each producer's first message only (absent
    from the others). ``omitted``: raw little-endian int64 sequence numbers of this producer's
    share that its source or a step left out on purpose since its previous message (absent when none).
    ``seal``: the message's nonce if it is sealed (absent when not; docs/wire-format.md, "Sealed messages").
    """

    v: int
    kind: Literal["data"]
    stream: Name
    rank: NonNegative
    producers: ProducerCount
    index: NonNegative
    share: Share
    first_seq: Seq
    last_seq: Seq
    seq: bytes
    time: bytes
    serializer: Name
    fields: Annotated[list[FieldInfo], msgspec.Meta(max_length=MAX_FIELDS)]
    checksum: Checksum | None
    sent: float
    metadata: RunMetadata | None = None
    omitted: bytes = b""
    seal: Seal = b""
    receivers: ProducerCount = 1

    def __post_init__(self) -> None:
        _check_ranks(self)
        if len(self.omitted) % 8:
            raise ValueError(f"omitted ({len(self.omitted)} bytes) must hold 8-byte values")
        _check_seal(self.seal)
        if not self.seq or len(self.seq) % 8 or len(self.seq) != len(self.time):
            raise ValueError(f"seq ({len(self.seq)} bytes) and time ({len(self.time)} bytes) must hold the same "
                             "number (at least one) of 8-byte values")


class EndMessage(msgspec.Struct, kw_only=True):
    """A producer's last message: what it sent, and whether it finished its share.

    The message is this header alone (docs/wire-format.md, "Header of an end-of-stream message"), and
    its seal frame if it is sealed. ``omitted`` is as in :class:`DataHeader`, for the events left out after
    the last data message; ``seal`` too (empty when not sealed).
    """

    v: int = WIRE_VERSION
    kind: Literal["end"] = "end"
    stream: Name
    rank: NonNegative
    producers: ProducerCount
    share: Share
    messages: NonNegative
    events: NonNegative
    last_seq: Seq | None
    status: Literal["ok", "error", "aborted"] = "ok"
    reason: str = ""
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    omitted: bytes = b""
    seal: Seal = b""
    receivers: ProducerCount | msgspec.UnsetType = msgspec.UNSET  # 1 is kept unset: absent on the wire

    def __post_init__(self) -> None:
        if self.receivers == 1:
            self.receivers = msgspec.UNSET
        _check_ranks(self)
        if len(self.omitted) % 8:
            raise ValueError(f"omitted ({len(self.omitted)} bytes) must hold 8-byte values")
        _check_seal(self.seal)

    @property
    def omitted_seqs(self) -> np.ndarray:
        """The sequence numbers the source or a step left out on purpose since this producer's last data message."""
        return np.frombuffer(self.omitted, dtype="<i8")

    def to_frames(self, key: StreamKey | None = None) -> list[Any]:
        """``[header]``; with ``key``, the sealed message ``[header, S]`` (a fresh nonce in ``seal``)."""
        if key is None:
            return [_encoder.encode(msgspec.structs.replace(self, seal=b"") if self.seal else self)]
        nonce = new_nonce()
        header = _encoder.encode(msgspec.structs.replace(self, seal=nonce))
        return [header, *seal_payload(header, nonce, [], key)]


@dataclass(slots=True)
class DataMessage:
    """One batch of events from one producer: the header's fields as Python objects, and the payload frames."""

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
    metadata: RunMetadata | None = None
    omitted_seqs: np.ndarray = field(default_factory=lambda: _NONE)
    seal: bytes = b""  # the nonce of a sealed message as received (its payload then still encrypted unless opened)
    receivers: int = 1

    @property
    def first_seq(self) -> int:
        return int(self.seq[0])

    @property
    def last_seq(self) -> int:
        return int(self.seq[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of payload."""
        return sum(frame_bytes(frame) for frame in self.payload)

    def to_frames(self, key: StreamKey | None = None) -> list[Any]:
        """Header plus payload frames, ready for ``send_multipart(copy=False)``; stamps ``sent``.

        With ``key``, the sealed message: a fresh nonce in the header's ``seal``, no checksum (the seal
        authenticates the payload), then the encrypted payload frames and the seal frame."""
        self.sent = time.time()
        nonce = b"" if key is None else new_nonce()
        header = DataHeader(
            v=WIRE_VERSION, kind="data", stream=self.stream, rank=self.rank, producers=self.producers,
            index=self.index, share=self.share, first_seq=self.first_seq, last_seq=self.last_seq,
            seq=np.ascontiguousarray(self.seq, dtype="<i8").tobytes(),
            time=np.ascontiguousarray(self.time, dtype="<f8").tobytes(),
            serializer=self.serializer, fields=self.fields, checksum=self.checksum if key is None else None,
            sent=self.sent, metadata=self.metadata,
            omitted=np.ascontiguousarray(self.omitted_seqs, dtype="<i8").tobytes(), seal=nonce,
            receivers=self.receivers,
        )
        encoded = _encoder.encode(header)
        if key is None:
            return [encoded, *self.payload]
        return [encoded, *seal_payload(encoded, nonce, self.payload, key)]

    @classmethod
    def from_header(cls, header: DataHeader, payload: list[Any]) -> DataMessage:
        return cls(stream=header.stream, rank=header.rank, producers=header.producers, index=header.index,
                   share=header.share, seq=np.frombuffer(header.seq, dtype="<i8"),
                   time=np.frombuffer(header.time, dtype="<f8"), serializer=header.serializer,
                   fields=header.fields, payload=payload, checksum=header.checksum, sent=header.sent,
                   metadata=header.metadata, omitted_seqs=np.frombuffer(header.omitted, dtype="<i8"),
                   seal=header.seal, receivers=header.receivers)


class _Envelope(msgspec.Struct):
    """What every header has, read first so that another version is named before its keys are checked."""

    v: Any = None
    kind: Any = None


_encoder = msgspec.msgpack.Encoder()
_envelope = msgspec.msgpack.Decoder(_Envelope)
_data_header = msgspec.msgpack.Decoder(DataHeader)
_end_message = msgspec.msgpack.Decoder(EndMessage)
_decoders = {"data": _data_header, "end": _end_message}


def parse_header(frame: Any) -> DataHeader | EndMessage:
    """The validated header of a message (its first frame).

    Raises WireFormatError on anything that is not a version-1 beamstream header, naming
    the key that is wrong.
    """
    raw = frame_buffer(frame)
    envelope = decode(_envelope, raw, "message header")
    if envelope.v is None:
        raise WireFormatError("message header is not a beamstream header (no 'v' key)")
    if envelope.v != WIRE_VERSION:
        raise WireFormatError(
            f"message uses wire format version {envelope.v!r}; this beamstream reads version {WIRE_VERSION}: "
            "run producer and consumer with the same beamstream release"
        )
    decoder = _decoders.get(envelope.kind) if isinstance(envelope.kind, str) else None
    if decoder is None:
        raise WireFormatError(f"unknown message kind {envelope.kind!r}")
    return decode(decoder, raw, "message header")


def parse_message(frames: Sequence[Any], verify: bool = True, key: StreamKey | None = None,
                  admission: AdmissionKey | None = None) -> DataMessage | EndMessage:
    """Decode received frames (bytes or zmq.Frame) into a message.

    Raises WireFormatError on anything that is not a version-1 beamstream message and
    ChecksumMismatch when ``verify`` and the payload does not match its checksum.

    Sealed messages (docs/wire-format.md, "Sealed messages"): with ``key`` (a consumer) the message
    is opened and its payload is the plaintext; with ``admission`` (a buffer) only its seal is
    checked and its payload stays encrypted. Either raises SealRefused for a message that is not
    sealed with that key (unsealed ones included: nobody may strip a seal). With neither, a sealed
    message is returned as it is, its payload encrypted and its ``seal`` set (a buffer without the
    stream's keys forwards it verbatim; a :class:`~beamstream.client.Client` refuses it).
    """
    if not frames:
        raise WireFormatError("empty message")
    header = parse_header(frames[0])
    rest = frames[1:]
    sealed = bool(header.seal)
    if not sealed and (key is not None or admission is not None):
        raise SealRefused(f"{_what(header)} is not sealed, but this stream is: only its producers, with its key, "
                          "may send in it (a message without a seal is forged or from a producer without the key)")
    if sealed and admission is not None:
        check_admitted(frames[0], rest, admission)
    if isinstance(header, EndMessage):
        if len(rest) > (1 if sealed else 0):
            raise WireFormatError(f"an end message has no payload, got {len(rest) - sealed} frames after its header"
                                  + (" and seal frame" if sealed else ""))
        if sealed and key is not None:
            open_payload(frames[0], header.seal, rest, key)
        _check_seqs(header.share, header.omitted_seqs, f"the end message of producer {header.rank}", "omitted ")
        return header
    if sealed:
        if key is not None:
            payload = open_payload(frames[0], header.seal, rest, key)
        else:  # still encrypted; without its seal frame (a buffer's spill may hand over the header alone)
            payload = [frame_buffer(frame) for frame in rest[:-1]]
        message = DataMessage.from_header(header, payload)
    else:
        message = DataMessage.from_header(header, [frame_buffer(frame) for frame in rest])
    _check_events(header, message)
    if verify and message.checksum is not None:
        actual = payload_checksum(message.payload)
        if actual != message.checksum:
            raise ChecksumMismatch(
                f"message {message.index} from producer {message.rank} (events {message.first_seq}-"
                f"{message.last_seq}): payload checksum {actual:#x} != header {message.checksum:#x}"
            )
    return message


def _what(header: DataHeader | EndMessage) -> str:
    """The message's kind and sender, without its index (so that a log says each kind of refusal once)."""
    kind = "An end message" if isinstance(header, EndMessage) else "A data message"
    return f"{kind} from producer {header.rank} of stream {header.stream!r}"


def _check_ranks(header: DataHeader | EndMessage) -> None:
    if header.rank >= header.producers:
        raise ValueError(f"rank {header.rank} is not below producers {header.producers}")
    if (header.receivers or 1) > header.producers:
        raise ValueError(f"receivers {header.receivers} is above producers {header.producers}")


def _check_seal(seal: bytes) -> None:
    if seal and len(seal) != NONCE_BYTES:
        raise ValueError(f"seal ({len(seal)} bytes) must be empty or a {NONCE_BYTES}-byte nonce")


def _check_events(header: DataHeader, message: DataMessage) -> None:
    """WireFormatError unless the message's sequence numbers increase, match ``first_seq``/``last_seq``
    and belong to its producer's share (so accounting can trust them)."""
    seq, share = message.seq, message.share
    if share.rank != message.rank or share.producers != message.producers:
        raise WireFormatError(f"message {message.index} from producer {message.rank} of {message.producers} "
                              f"carries the share of rank {share.rank} of {share.producers}")
    if (seq[0], seq[-1]) != (header.first_seq, header.last_seq):
        raise WireFormatError(f"message {message.index} from producer {message.rank}: events {seq[0]}-{seq[-1]} "
                              f"but the header says first_seq {header.first_seq}, last_seq {header.last_seq}")
    what = f"message {message.index} from producer {message.rank}"
    _check_seqs(share, seq, what)
    _check_seqs(share, message.omitted_seqs, what, "omitted ")


def _check_seqs(share: Share, seqs: np.ndarray, what: str, kind: str = "") -> None:
    """WireFormatError (naming ``what``, and the ``kind`` of sequence numbers) unless ``seqs`` increase and
    belong to the share."""
    if len(seqs) > 1 and not (np.diff(seqs) > 0).all():
        raise WireFormatError(f"{what}: {kind}sequence numbers do not increase")
    if len(seqs) and not share.owns(seqs).all():
        raise WireFormatError(f"{what}: {kind}events outside its share")


def message_from_batch(batch: Batch, serializer: Any, *, stream: str, rank: int, producers: int, index: int,
                       share: Share, metadata: RunMetadata | None = None, omitted: np.ndarray = _NONE,
                       checksum: bool = True, receivers: int = 1) -> DataMessage:
    """Encode ``batch`` with ``serializer`` into the ``index``-th data message of a producer (carrying
    ``metadata`` and the ``omitted`` sequence numbers, if given; ``receivers``: the producers' messages are
    spread by rank over that many receivers). ``checksum=False`` leaves the payload's checksum out (a sealed
    stream's: the seal authenticates the payload)."""
    payload = serializer.encode(batch)
    return DataMessage(
        stream=stream, rank=rank, producers=producers, index=index, share=share, seq=batch.seq, time=batch.time,
        serializer=serializer.name, fields=[FieldInfo.of(name, array) for name, array in batch.data.items()],
        payload=payload, checksum=payload_checksum(payload) if checksum else None, metadata=metadata,
        omitted_seqs=omitted, receivers=receivers,
    )
