"""The service's secrets at rest: the job store keeps each stream's key and callback secret encrypted under the
service key, a file outside the database, so that a copy of the database alone (a dump, a backup, a file left
readable) opens no stream and forges no callback.

The service key is 32 random bytes, kept as URL-safe base64 text in a file created readable by its owner only
(setting ``service_key_file``, default ``<state_dir>/service.key``); a key file others may read is refused, as
stream key files are. Each value is sealed with AES-256-GCM, bound to its row and column (a value moved to
another stream or column does not open), and stored as ``sealed1:`` + base64(nonce + ciphertext). Values
written before the store sealed them (no prefix) are sealed when the store is opened with a key.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from beamstream.security.streamkey import StreamKeyError, read_key_file

PREFIX = "sealed1:"
NONCE_BYTES = 12


class ServiceKeyError(Exception):
    """A service key that cannot be used (unreadable, others may read it, malformed), or a stored secret it
    does not open (written under another key, or altered); the message says which file and what to do."""


class ServiceKey:
    """The key the job store seals its secrets with."""

    def __init__(self, key: bytes, origin: str = "a service key held in memory") -> None:
        if len(key) != 32:
            raise ServiceKeyError(f"{origin}: a service key is 32 bytes, not {len(key)}")
        self._cipher = AESGCM(key)
        self.origin = origin

    def __repr__(self) -> str:
        return f"ServiceKey({self.origin})"

    @classmethod
    def generate(cls) -> ServiceKey:
        """A new key held in memory only: what a store opened with it seals, only it can open."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_file(cls, path: Path) -> ServiceKey:
        """The key in ``path``, made there first (readable by its owner only) if there is none; ServiceKeyError
        if it cannot be read or made, is malformed, or others may read or change it."""
        path = Path(path)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ServiceKeyError(f"cannot make the service key file {path}: {exc.strerror}") from None
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
        try:
            text = read_key_file(path)  # refused if others may read or change it, as every key file
        except StreamKeyError as exc:
            raise ServiceKeyError(f"service key: {exc}") from None
        try:
            key = base64.urlsafe_b64decode(text.encode())
        except ValueError:
            key = b""
        return cls(key, origin=f"the service key file {path}")

    def seal(self, value: str, context: str) -> str:
        """``value`` encrypted, bound to ``context`` (its row and column)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._cipher.encrypt(nonce, value.encode(), context.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, context: str) -> str:
        """The value ``stored`` holds (one written before sealing, without the prefix, as it is); ServiceKeyError if
        this key does not open it."""
        if not is_sealed(stored):
            return stored
        data = base64.urlsafe_b64decode(stored[len(PREFIX):].encode())
        try:
            return self._cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], context.encode()).decode()
        except InvalidTag:
            raise ServiceKeyError(f"a secret of the job store ({context}) does not open with {self.origin}: it was "
                                  "sealed under another service key, or altered; start the service with the key "
                                  "file it was made with (setting service_key_file)") from None


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)
