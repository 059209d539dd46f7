"""How a beamstream stream is laid out in NATS JetStream (docs/nats-backend.md); needs no nats-py.

Stream ``name`` is the JetStream stream ``BEAMSTREAM_<name>`` with subjects ``beamstream.<name>.>``:

- ``beamstream.<name>.data``: one JetStream message per beamstream data message. A message
  that fits the server's ``max_payload`` is stored **inline**: its frames concatenated, with
  headers ``Bs-Msg`` (:func:`message_id`) and ``Bs-Frames`` (the frame lengths,
  comma-separated). A larger one is stored as a **manifest**: empty body, headers
  ``Bs-Msg``, ``Bs-Frames``, ``Bs-Parts`` (n) and ``Bs-Part-Seqs`` (the stream sequence
  numbers of its parts, in order).
- ``beamstream.<name>.part``: the parts of split messages, headers ``Bs-Msg``, ``Bs-Part`` (i)
  and ``Bs-Parts`` (n), body the i-th slice of the concatenated frames. The manifest is
  published only after every part is stored, so a reader never sees half a message.
- ``beamstream.<name>.end``: end-of-stream messages, stored the same way.
- ``beamstream.<name>.verdict``: :class:`~beamstream.wire.control.Verdict` records written by
  the buffer once every producer has ended (or went silent); the newest one counts. On a sealed
  stream each carries ``Bs-Proof`` (:func:`verdict_proof`: the admission key's tag of the record),
  and a reader holding the stream's key counts only the newest verdict that proves it.
- ``beamstream.<name>.metadata``: the stream's :class:`~beamstream.wire.metadata.RunMetadata`
  (msgpack), written by the buffer when the first message that carries it arrives, so a reader
  that never sees that message still has it (until the stream's ``max_age`` removes it).

A stream **spread** over N JetStream streams (``?streams=N`` in the buffer's URL, N > 1) keeps the
records above in ``BEAMSTREAM_<name>`` (shard 0) except the data messages: the buffer numbers
them 0, 1, 2, … in the order it stores them (its *log position*, header ``Bs-Pos`` on the data
record) and keeps message p, with its parts, in shard ``p % N``: JetStream stream
``BEAMSTREAM-<k>_<name>`` with subjects ``beamstream-<k>.<name>.>`` for k ≥ 1 (``data`` and
``part`` only). Shard 0's description says N (:func:`spread_description`). Readers merge the
shards by ``Bs-Pos``.

Every data, part and end record carries a ``Nats-Msg-Id`` (:class:`MessageIds`), so the server
drops a copy stored twice within its duplicate window. On a sealed stream the id is a MAC
under a key derived from the stream's admission key, which nobody without the stream's
credentials can compute: nobody else can claim a future message's id first and so make the
server drop the real message as a duplicate. On an unsealed stream it is the record's identity
(:func:`record_identity`), which protects only against the buffer's own resends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from beamstream.errors import WireFormatError
from beamstream.wire.frames import frame_buffer
from beamstream.wire.messages import EndMessage

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey

MSG = "Bs-Msg"
FRAMES = "Bs-Frames"
PARTS = "Bs-Parts"
PART = "Bs-Part"
PART_SEQS = "Bs-Part-Seqs"
MSG_ID = "Nats-Msg-Id"
PROOF = "Bs-Proof"
POS = "Bs-Pos"
MAX_STREAMS = 64  # JetStream streams one beamstream stream may be spread over
_VERDICT_CONTEXT = b"beamstream-nats/1 verdict "
ID_BYTES = 16  # MAC bytes in a sealed stream's message ids: 128 bits, 22 characters of URL-safe base64
_ID_KEY_CONTEXT = b"beamstream-nats/1 message id key"
HEADER_ROOM = 1024  # bytes kept free in every part for its headers (they need < 200)
NAME = re.compile(r"[A-Za-z0-9_-]+")
Subject = Literal["data", "part", "end", "verdict", "metadata"]


def check_name(kind: str, name: str) -> str:
    """``name`` if it is usable as a NATS subject token and stream/consumer name, else ValueError."""
    if not NAME.fullmatch(name):
        raise ValueError(f"{kind} {name!r} may contain only letters, digits, '_' and '-'")
    return name


def stream_name(name: str, shard: int = 0) -> str:
    """The JetStream stream that holds beamstream stream ``name`` (of a spread one: its shard ``shard``)."""
    checked = check_name('stream name', name)
    return f"BEAMSTREAM_{checked}" if shard == 0 else f"BEAMSTREAM-{shard}_{checked}"


def subject(name: str, kind: Subject | Literal[">"], shard: int = 0) -> str:
    """The subject of ``kind`` records of beamstream stream ``name`` (``>``: all of them) in shard ``shard``."""
    checked = check_name('stream name', name)
    return f"beamstream.{checked}.{kind}" if shard == 0 else f"beamstream-{shard}.{checked}.{kind}"


_SPREAD = "beamstream: spread over {streams} JetStream streams"


def spread_description(streams: int) -> str | None:
    """The description of shard 0 of a stream spread over ``streams`` JetStream streams (1: None, not spread)."""
    return None if streams == 1 else _SPREAD.format(streams=streams)


def spread_of(description: str | None) -> int:
    """Over how many JetStream streams the stream whose shard 0 has ``description`` is spread (1: not spread)."""
    match = re.fullmatch(_SPREAD.format(streams=r"(\d+)"), description or "")
    return int(match.group(1)) if match else 1


def position(headers: Mapping[str, str]) -> int:
    """The log position (``Bs-Pos``) of a data record of a spread stream; WireFormatError if it has none."""
    value = headers.get(POS, "")
    if not value.isdigit():
        raise WireFormatError(f"data record {headers.get(MSG)!r} of a spread stream has no {POS} header")
    return int(value)


def message_id(message: Any) -> str:
    """``Bs-Msg`` of a data or end message: ``<stream id>-<rank>-<index>`` or ``<stream id>-<rank>-end``."""
    suffix = "end" if isinstance(message, EndMessage) else str(message.index)
    return f"{message.stream}-{message.rank}-{suffix}"


def record_identity(headers: Mapping[str, str]) -> str:
    """What tells one stored record from every other of its stream: ``Bs-Msg``, ``-part-i`` appended for part i."""
    return headers[MSG] + (f"-part-{headers[PART]}" if PART in headers else "")


class MessageIds:
    """The ``Nats-Msg-Id`` of each record of one stream, given its admission key if it is sealed.

    Promises: a record's id depends only on its identity (:func:`record_identity`) and the key, so
    storing a record again gives it the same id (the server drops the copy). With ``admission``,
    the id is the first :data:`ID_BYTES` bytes of HMAC-SHA256 of the identity under a key derived
    from ``admission`` (HMAC of a fixed context: not a tag the admission key makes for anything
    else), URL-safe base64 without padding: without the key, nobody can tell a record's id
    before it is stored. Without it (an unsealed stream) the id is the identity itself.
    """

    def __init__(self, admission: AdmissionKey | None = None) -> None:
        self.key = None if admission is None else admission.sign(_ID_KEY_CONTEXT)

    def of(self, headers: Mapping[str, str]) -> str:
        """The ``Nats-Msg-Id`` of the record with these beamstream headers."""
        identity = record_identity(headers)
        if self.key is None:
            return identity
        mac = hmac.new(self.key, identity.encode(), hashlib.sha256).digest()[:ID_BYTES]
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def verdict_proof(admission: AdmissionKey, body: bytes) -> str:
    """``Bs-Proof`` of a verdict record of a sealed stream whose msgpack is ``body``: the admission key's tag of it
    (under a context of its own: no tag the key makes for anything else), URL-safe base64."""
    return base64.urlsafe_b64encode(admission.sign(_VERDICT_CONTEXT + bytes(body))).decode("ascii")


def verdict_proven(admission: AdmissionKey, body: bytes, proof: str | None) -> bool:
    """Whether ``proof`` (a record's ``Bs-Proof``, None: none) shows the verdict ``body`` was written with
    ``admission``."""
    try:
        return proof is not None and admission.verify(_VERDICT_CONTEXT + bytes(body), base64.urlsafe_b64decode(proof))
    except ValueError:
        return False


def header_bytes(headers: dict[str, str]) -> int:
    """Bytes the NATS header block of ``headers`` takes on the wire (counted in max_payload)."""
    return len("NATS/1.0\r\n\r\n") + sum(len(key) + len(value) + 4 for key, value in headers.items())


def split(data: bytes | memoryview, size: int) -> list[Any]:
    """``data`` cut into consecutive slices of at most ``size`` bytes (of a memoryview: views, no copies)."""
    return [data[start:start + size] for start in range(0, len(data), size)]


def join_frames(frames: Sequence[Any]) -> tuple[bytes, str]:
    """The frames concatenated, and their lengths as a ``Bs-Frames`` header value."""
    views = [memoryview(frame_buffer(frame)) for frame in frames]
    return b"".join(views), ",".join(str(view.nbytes) for view in views)


def frame_lengths(value: str) -> list[int]:
    """The lengths in a ``Bs-Frames`` value; WireFormatError if it is not a comma-separated list of sizes."""
    try:
        lengths = [int(length) for length in value.split(",")]
    except ValueError:
        raise WireFormatError(f"{FRAMES} header {value[:64]!r} is not a list of frame lengths") from None
    if any(length < 0 for length in lengths):
        raise WireFormatError(f"{FRAMES} header {value[:64]!r} has a negative length")
    return lengths


def cut_frames(data: bytes, lengths: str) -> list[memoryview]:
    """Frames of ``data`` by the ``Bs-Frames`` value ``lengths``: views, no copies."""
    view, frames, start = memoryview(data), [], 0
    for length in frame_lengths(lengths):
        frames.append(view[start:start + length])
        start += length
    if start != len(data):
        raise WireFormatError(f"stored message has {len(data)} bytes, its {FRAMES} header says {start}")
    return frames


def part_seqs(value: str) -> list[int]:
    """The stream sequence numbers in a ``Bs-Part-Seqs`` value."""
    try:
        return [int(seq) for seq in value.split(",")]
    except ValueError:
        raise WireFormatError(f"{PART_SEQS} header {value[:64]!r} is not a list of sequence numbers") from None
