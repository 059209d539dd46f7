"""Sealed messages: payloads encrypted and every message authenticated with its stream's keys
(docs/wire-format.md, "Sealed messages"; docs/security.md, "The data plane").

A sealed message is the frames ``[H, C_0, …, C_{n-1}, S]``:

- ``H``, the header as sent, with ``seal`` set to a random 12-byte nonce ``N``; it stays readable (the buffer
  accounts with it) and is authenticated by everything below;
- ``C_i``, payload frame ``P_i`` encrypted with AES-256-GCM under the stream's payload key, nonce ``N_i`` (``N``
  with its last four bytes XORed with big-endian ``i``) and ``H`` as associated data: ciphertext then 16-byte tag;
- ``S`` (48 bytes): the AES-256-GCM tag of nothing under nonce ``N_n`` with ``H`` as associated data (it ties
  the header and the number of payload frames to the payload key; an end message has only this), then
  HMAC-SHA256 of ``H`` under the stream's admission key (what a buffer, which holds only that key, checks).

A consumer holding the stream key opens a message with :func:`open_payload`; a buffer checks it with
:func:`check_admitted`. Both raise :class:`~beamstream.errors.SealRefused` for anything that is not sealed
with the right key. A replayed message passes both (it is authentic) and is then a duplicate of its
(rank, index), which buffer and consumer already drop and count.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from beamstream.errors import SealRefused
from beamstream.security.streamkey import AdmissionKey, StreamKey
from beamstream.wire.frames import frame_buffer

NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_BYTES = TAG_BYTES + 32


def new_nonce() -> bytes:
    """A fresh random nonce for one message (96 random bits: no repeat in any stream's lifetime)."""
    return os.urandom(NONCE_BYTES)


def _nonce(nonce: bytes, index: int) -> bytes:
    return nonce[:8] + (int.from_bytes(nonce[8:], "big") ^ index).to_bytes(4, "big")


def _octets(frame: Any) -> memoryview:
    """The bytes of ``frame`` as a flat view (payload frames may be numpy arrays of any dtype and shape)."""
    view = memoryview(frame_buffer(frame))
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _cipher(key: StreamKey) -> Any:
    return _aesgcm(key.payload_key)


@functools.lru_cache(maxsize=16)  # the streams a process reads or writes at once, each key set up once
def _aesgcm(payload_key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(payload_key)


def seal_payload(header: bytes, nonce: bytes, payload: Sequence[Any], key: StreamKey) -> list[Any]:
    """``[C_0, …, C_{n-1}, S]`` for the header bytes ``header`` (whose ``seal`` is ``nonce``) and ``payload``."""
    cipher = _cipher(key)
    sealed = [cipher.encrypt(_nonce(nonce, index), _octets(frame), header) for index, frame in enumerate(payload)]
    sealed.append(cipher.encrypt(_nonce(nonce, len(payload)), b"", header) + key.admission.sign(header))
    return sealed


def check_admitted(header: Any, frames_after_header: Sequence[Any], admission: AdmissionKey) -> None:
    """SealRefused unless the message (header bytes ``header`` then its other frames) carries a seal frame whose
    HMAC under ``admission`` matches its header."""
    if not frames_after_header:
        raise SealRefused("the message is not sealed (no seal frame): only the stream's producers may send here")
    seal = bytes(frame_buffer(frames_after_header[-1]))
    if len(seal) != SEAL_BYTES or not admission.verify(bytes(frame_buffer(header)), seal[TAG_BYTES:]):
        raise SealRefused("the message's seal does not match this stream's admission key: "
                          "only the stream's producers may send here")


def _decrypt(cipher: Any, nonce: bytes, frame: Any, aad: bytes) -> Any:
    """The plaintext of one encrypted frame: decrypted in place where the frame is writable (a received ZeroMQ
    frame: no second 8 MiB buffer to allocate and fault in), else into new bytes."""
    view = _octets(frame)
    if view.readonly or len(view) < TAG_BYTES:
        return cipher.decrypt(nonce, view, aad)
    plain = view[:len(view) - TAG_BYTES]
    cipher.decrypt_into(nonce, view, aad, plain)
    return plain


def open_payload(header: Any, nonce: bytes, frames_after_header: Sequence[Any], key: StreamKey) -> list[Any]:
    """The plaintext payload frames of a sealed message (header bytes ``header``, whose ``seal`` is ``nonce``);
    SealRefused if its seal, or any frame, was not made with ``key`` for exactly this header.

    A writable frame (as ZeroMQ hands them over) is decrypted in place and its plaintext returned as a view of
    it; the frames of a refused message may then be left overwritten."""
    from cryptography.exceptions import InvalidTag

    if len(nonce) != NONCE_BYTES:
        raise SealRefused(f"the message is not sealed (its seal holds {len(nonce)} bytes, not a {NONCE_BYTES}-byte "
                          "nonce)")
    if not frames_after_header:
        raise SealRefused("a sealed message without its seal frame")
    cipher, aad = _cipher(key), bytes(frame_buffer(header))
    *encrypted, seal = frames_after_header
    seal = bytes(frame_buffer(seal))
    try:
        if len(seal) != SEAL_BYTES:
            raise InvalidTag
        cipher.decrypt(_nonce(nonce, len(encrypted)), seal[:TAG_BYTES], aad)
        return [_decrypt(cipher, _nonce(nonce, index), frame, aad) for index, frame in enumerate(encrypted)]
    except InvalidTag:
        raise SealRefused("the message was not sealed with this stream's key (forged, altered, or of another "
                          "stream)") from None
