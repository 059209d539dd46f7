"""Control messages between the local buffer and its consumers (docs/buffer-protocol.md), and the verdict.

A consumer's DEALER talks to the buffer's consumer ROUTER. Every control message is one
msgpack map whose ``op`` says what it is and whose ``protocol`` is :data:`PROTOCOL`; a
delivery is a :class:`Deliver` frame followed by the producer's message frames, unchanged.

consumer → buffer: :class:`Hello`, :class:`Ack`.
buffer → consumer: :class:`Deliver`, :class:`Describe`, :class:`End`, :class:`Ping`, :class:`Rejoin`, :class:`Error`.

:class:`Verdict` is a stream's final account, the same from every buffer backend: the local
buffer sends it inside :class:`End`, the NATS backend stores it as a record of its own.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec

from beamstream.batch import NonNegative
from beamstream.errors import WireFormatError
from beamstream.wire.frames import decode, frame_buffer
from beamstream.wire.metadata import RunMetadata

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey

PROTOCOL = "beamstream-buffer/1"
Range = tuple[int, int]
MAX_CREDIT = 1 << 16  # messages a consumer may ask for in one control message
Credit = Annotated[int, msgspec.Meta(ge=0, le=MAX_CREDIT)]


class Control(msgspec.Struct, tag_field="op", kw_only=True):
    """Base of every control message: ``op`` (the class's tag) then ``protocol``."""

    protocol: str = PROTOCOL


class Hello(Control, tag="hello", kw_only=True):
    """Join ``group`` (created at ``start`` if new); the buffer may send ``credit`` messages before an ack.

    A buffer that holds its stream's admission key admits only a hello that proves its sender holds it too:
    ``nonce`` (fresh random bytes), ``at`` (the sender's clock, Unix seconds) and ``proof``, the admission key's
    HMAC of :func:`hello_proof_data` (made by :func:`proven_hello`). Without a key all three stay empty.
    """

    group: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    lossy: bool = False
    start: Literal["earliest", "now"] = "earliest"
    credit: Credit = 1
    nonce: Annotated[bytes, msgspec.Meta(max_length=64)] = b""
    at: float = 0.0
    proof: Annotated[bytes, msgspec.Meta(max_length=64)] = b""


class Ack(Control, tag="ack", kw_only=True):
    """The consumer is done with ``offsets`` and may be sent ``credit`` more messages."""

    offsets: Annotated[list[NonNegative], msgspec.Meta(max_length=MAX_CREDIT)] = []
    credit: Credit = 0


class Deliver(Control, tag="deliver", kw_only=True):
    """Message ``offset`` of the buffer's log follows; ``skipped``: the group's running count of skipped messages."""

    offset: NonNegative
    skipped: NonNegative


class Describe(Control, tag="describe", kw_only=True):
    """The stream's description, sent to a member when it joins and to every member when the buffer learns it."""

    metadata: RunMetadata


class End(Control, tag="end", kw_only=True):
    """The stream has ended and this member's group has everything: the verdict, and the group's skipped count."""

    complete: bool
    summary: str
    skipped: NonNegative
    missing: list[Range]

    @property
    def verdict(self) -> Verdict:
        return Verdict(complete=self.complete, summary=self.summary, missing=self.missing)


class Ping(Control, tag="ping", kw_only=True):
    """Liveness probe; ignore."""


class Rejoin(Control, tag="rejoin", kw_only=True):
    """The buffer does not know this consumer (it restarted): send :class:`Hello` again."""


class Error(Control, tag="error", kw_only=True):
    """The buffer could not use the consumer's last control message."""

    reason: str


class Verdict(Control, tag="verdict", kw_only=True):
    """A stream's final account: complete or not, a summary for people, the sequence ranges that never arrived."""

    complete: bool
    summary: str
    missing: list[Range]


ToBuffer = Hello | Ack
ToConsumer = Deliver | Describe | End | Ping | Rejoin | Error
C = TypeVar("C")


class _Envelope(msgspec.Struct):
    op: Any = None
    protocol: Any = None


_encoder = msgspec.msgpack.Encoder()
_envelope = msgspec.msgpack.Decoder(_Envelope)
_decoders: dict[Any, msgspec.msgpack.Decoder] = {}


HELLO_NONCE_BYTES = 16
HELLO_WINDOW_S = 60.0  # a proven hello's ``at`` may be this far from the buffer's clock, either way
_HELLO_PROOF_CONTEXT = "beamstream-buffer/1 hello proof"
ADMIT_ONLY_HOLDERS = "this stream's buffer admits only holders of its credentials"


def hello_proof_data(hello: Hello) -> bytes:
    """What a hello's ``proof`` signs: msgpack of the array [context, protocol, group, lossy, start, nonce, at]
    (``credit`` is not signed: it only paces deliveries)."""
    return _encoder.encode([_HELLO_PROOF_CONTEXT, hello.protocol, hello.group, hello.lossy, hello.start,
                            hello.nonce, float(hello.at)])


def proven_hello(admission: AdmissionKey | None, *, group: str, lossy: bool = False,
                 start: Literal["earliest", "now"] = "earliest", credit: int = 1, at: float | None = None,
                 nonce: bytes | None = None) -> Hello:
    """A hello for ``group``; with ``admission``, carrying a fresh proof that its sender holds that key
    (``at``: now, ``nonce``: random, unless given)."""
    hello = Hello(group=group, lossy=lossy, start=start, credit=credit)
    if admission is not None:
        hello.nonce = os.urandom(HELLO_NONCE_BYTES) if nonce is None else nonce
        hello.at = time.time() if at is None else at
        hello.proof = admission.sign(hello_proof_data(hello))
    return hello


def proof_refusal(admission: AdmissionKey, hello: Hello) -> tuple[str, str] | None:
    """None if ``hello``'s proof was made with ``admission``; else (kind, reason), as the buffer's
    :meth:`HelloCheck.refusal <beamstream.buffer.admission.HelloCheck.refusal>` says them (``no proof``,
    ``wrong key``). Also the service relay's check of a reader's own proof."""
    if not hello.proof:
        return "no proof", (f"{ADMIT_ONLY_HOLDERS}: give the stream's key (Client(..., key=...), or its key file) "
                            "so that the hello carries a proof")
    if not hello.nonce or not admission.verify(hello_proof_data(hello), hello.proof):
        return "wrong key", (f"{ADMIT_ONLY_HOLDERS}: the hello's proof does not match this stream's admission "
                             "key; give this stream's key (not another stream's)")
    return None


def pack(message: Control) -> bytes:
    """The message as one msgpack frame."""
    return _encoder.encode(message)


def unpack(frame: Any, kind: type[C] | Any) -> C:
    """The control message in ``frame``, one of ``kind`` (a class or a union of them).

    Raises WireFormatError saying what is wrong with anything else: not msgpack, no ``op``,
    another protocol, an ``op`` not expected here, or a field of the wrong type or range.
    """
    raw = frame_buffer(frame)
    envelope = decode(_envelope, raw, "control message")
    if envelope.op is None:
        raise WireFormatError("control message has no 'op'")
    if envelope.protocol != PROTOCOL:
        raise WireFormatError(f"control message speaks {envelope.protocol!r}, this buffer speaks {PROTOCOL!r}")
    decoder = _decoders.get(kind) or _decoders.setdefault(kind, msgspec.msgpack.Decoder(kind))
    return decode(decoder, raw, f"{envelope.op!r} control message")
