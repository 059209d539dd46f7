"""Short-lived bearer tokens for notebooks and browsers (docs/security.md, Tokens).

A caller authenticated by its client certificate mints a token (``POST /v1/tokens``): a random
secret (:func:`secrets.token_urlsafe`, 32 bytes) that the service returns once and keeps only as
its SHA-256 digest, with the identity it acts as, the experiments and the stream it is limited
to, when it expires and whether it was revoked. Whoever presents the secret
(``Authorization: Bearer TOKEN``; on the relay's WebSocket also ``?token=TOKEN``) acts as that
identity, within those limits, until it expires or is revoked. The secret itself is never logged
nor stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

@dataclass(frozen=True, slots=True)
class Grant:
    """What a token allows: act as ``identity``, only on ``experiments`` (None: all the identity may) and only on
    ``stream`` (None: any), until ``expires`` (seconds since the epoch) unless ``revoked`` (when, or None)."""

    id: str
    identity: str
    experiments: tuple[str, ...] | None
    stream: str | None
    created: float
    expires: float
    revoked: float | None
    certificate: str | None = None  # serial number (hex) of the client certificate it was minted with

    def valid(self, now: float) -> bool:
        """Whether it is neither revoked nor expired at ``now`` (seconds since the epoch)."""
        return self.revoked is None and now < self.expires

    def permits_stream(self, stream_id: str, experiment: str | None) -> bool:
        """Whether the stream ``stream_id`` (labelled ``experiment``) is within this token's limits."""
        return (self.stream is None or stream_id == self.stream) and self.permits_experiment(experiment)

    def permits_experiment(self, experiment: str | None) -> bool:
        """Whether ``experiment`` is within this token's limits."""
        return self.experiments is None or experiment in self.experiments


def new_secret() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """What the store keeps of ``token``: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (None without one, or for another scheme)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def grant_of(store, token: str, now: float) -> Grant | None:  # noqa: ANN001 (a JobStore: imported lazily)
    """The grant of ``token`` if it is valid at ``now`` (None: unknown, tampered, expired or revoked)."""
    if not token or len(token) > 256:
        return None
    found = store.token_by_digest(digest(token))
    return found if found is not None and found.valid(now) else None
