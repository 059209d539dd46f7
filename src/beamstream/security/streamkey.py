"""A stream's credentials: one random secret, and the two keys derived from it (docs/security.md, "The data plane").

The request service makes a :class:`StreamKey` for each stream and gives it only to the stream's owner (in the
answer to ``POST /v1/streams`` and from ``GET /v1/streams/{id}/credentials``) and to the stream's producer jobs.
Two keys are derived from it with HKDF-SHA256, so that neither can be computed from the other:

- the **payload key** (AES-256-GCM): producers encrypt every payload frame and authenticate every header with it;
  consumers open them. Nobody else holds it: not the buffer, not a NATS server.
- the **admission key** (HMAC-SHA256, an :class:`AdmissionKey`): producers sign each message's header with it and
  consumers sign their hello, so the buffer (which holds this key only) admits the stream's holders and refuses
  everyone else, without being able to read a payload.

On the command line and in files a key is written as URL-safe base64 text (``to_text`` / ``from_text``); a key
file must be readable by its owner only (:func:`read_key_file`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Self

from beamstream.errors import BeamstreamError

KEY_BYTES = 32
_PAYLOAD_INFO = b"beamstream/1 payload key"
_ADMISSION_INFO = b"beamstream/1 admission key"


class StreamKeyError(BeamstreamError):
    """A key that cannot be used: malformed text, a file others can read, the wrong length."""


def _hkdf(secret: bytes, info: bytes) -> bytes:
    """32 bytes of HKDF-SHA256 (RFC 5869, no salt) of ``secret`` for ``info``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def _decode(text: str, what: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode("ascii") + b"=" * (-len(text.strip()) % 4))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise StreamKeyError(f"{what} is not URL-safe base64 text") from None
    if len(raw) != KEY_BYTES:
        raise StreamKeyError(f"{what} holds {len(raw)} bytes, not {KEY_BYTES}: copy the whole key")
    return raw


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


class _Key:
    """32 secret bytes, written as URL-safe base64 text; never shown by repr."""

    what = "key"

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise StreamKeyError(f"the {self.what} must be {KEY_BYTES} bytes, not {len(raw)}")
        self.raw = raw

    def to_text(self) -> str:
        return _encode(self.raw)

    @classmethod
    def from_text(cls, text: str) -> Self:
        return cls(_decode(text, f"the {cls.what}"))

    def __repr__(self) -> str:  # never the key itself
        return f"{type(self).__name__}(…)"


class AdmissionKey(_Key):
    """The key that admits a stream's producers and consumers to its buffer (HMAC-SHA256 tags of 32 bytes)."""

    what = "admission key"

    def sign(self, data: bytes) -> bytes:
        """The 32-byte tag of ``data``."""
        return hmac.new(self.raw, data, hashlib.sha256).digest()

    def verify(self, data: bytes, tag: bytes) -> bool:
        """True if ``tag`` is the tag of ``data`` (compared in constant time)."""
        return hmac.compare_digest(self.sign(data), tag)


class StreamKey(_Key):
    """A stream's secret (32 random bytes) and the keys derived from it."""

    what = "stream key"

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self.payload_key = _hkdf(raw, _PAYLOAD_INFO)
        self.admission = AdmissionKey(_hkdf(raw, _ADMISSION_INFO))

    @classmethod
    def generate(cls) -> StreamKey:
        return cls(secrets.token_bytes(KEY_BYTES))


def write_key_file(path: Path, key: StreamKey | AdmissionKey) -> Path:
    """Write ``key`` as text to ``path``, readable and writable by its owner only (created so: never briefly
    readable by others)."""
    path = Path(path)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(key.to_text() + "\n")
    return path


def read_key_file(path: Path) -> str:
    """The key text in ``path``; StreamKeyError if it cannot be read, or if others may read or write it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise StreamKeyError(f"cannot read the key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StreamKeyError(f"the key file {path} may be read or changed by others (mode {stat.filemode(mode)}): "
                        f"chmod 600 {path}")
    return text.strip()
