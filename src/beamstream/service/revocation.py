"""Which certificates the facility's CA has revoked, as its revocation list (the setting ``tls_crl``) says now.

The TLS layer refuses a revoked certificate at the handshake; this tells the API the same for what a certificate
left behind: a bearer token minted with a certificate is refused from the moment the certificate is revoked
(docs/security.md, Tokens). The file is checked on each question (one ``stat``) and read again only when its
inode, modification time or size changed; a file that cannot be read or parsed leaves the last good list in force,
logged at ERROR once per change.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cryptography import x509

logger = logging.getLogger(__name__)


class Revocations:
    """The serial numbers revoked by the CRL file ``path`` (PEM); none without a file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._crl: x509.CertificateRevocationList | None = None

    def revoked(self, serial: str) -> bool:
        """Whether the certificate with serial number ``serial`` (hex) is revoked."""
        if self.path is None:
            return False
        with self._lock:
            self._refresh()
            crl = self._crl
        return crl is not None and crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None

    def _refresh(self) -> None:
        try:
            info = os.stat(self.path)
            stamp = info.st_ino, info.st_mtime_ns, info.st_size
            if stamp == self._stamp:
                return
            self._crl = x509.load_pem_x509_crl(Path(self.path).read_bytes())
            self._stamp = stamp
        except (OSError, ValueError) as exc:
            if self._stamp is not None or self._crl is None:
                logger.error("the revocation list %s cannot be read (%s); the last good one stays in force",
                             self.path, exc)
            self._stamp = None
