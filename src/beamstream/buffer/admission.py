"""Admission: a buffer given its stream's admission key serves only the stream's credential holders
(docs/buffer-protocol.md, "Admission"; docs/security.md, "The data plane").

The buffer holds the admission key only (an :class:`~beamstream.security.streamkey.AdmissionKey`), never the
stream key: it can tell who holds the stream's credentials, but cannot read a payload.

- **Producers**: every message must carry a seal frame whose HMAC of the header matches the key
  (:func:`~beamstream.wire.sealing.check_admitted`); :meth:`Buffer.receive <beamstream.buffer.base.Buffer.receive>`
  refuses any other as it refuses an unreadable one.
- **Consumers** (local backend): a hello must carry a proof (:func:`~beamstream.wire.control.proven_hello`):
  :class:`HelloCheck` refuses one without a valid proof, one whose ``at`` is more than
  :data:`~beamstream.wire.control.HELLO_WINDOW_S` from the buffer's clock, and one whose nonce it has seen
  within that window (a replay). Given a ``record`` file (the local buffer's spill directory has one), the nonces
  it remembers are written there, atomically and fsynced, before a hello is admitted, and read back when the
  buffer starts again on that directory: a hello captured before a restart is still a replay after it.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from beamstream.atomic import write_atomically
from beamstream.buffer.segments import SpillError
from beamstream.security.streamkey import AdmissionKey, StreamKeyError, read_key_file
from beamstream.wire.control import ADMIT_ONLY_HOLDERS, HELLO_WINDOW_S, Hello, proof_refusal

__all__ = ["ADMIT_ONLY_HOLDERS", "HelloCheck", "load_admission_key", "proof_refusal", "read_admitted"]


def load_admission_key(path: Path) -> AdmissionKey:
    """The admission key in the key file ``path`` (its text, as ``AdmissionKey.to_text`` writes it).

    Raises StreamKeyError if the file cannot be read, others may read or change it, or it holds no key.
    """
    text = read_key_file(path)
    try:
        return AdmissionKey.from_text(text)
    except StreamKeyError as exc:  # never the text itself: it may be a key after all
        raise StreamKeyError(f"the key file {path} holds no admission key: {exc}") from None


class HelloCheck:
    """Decides whether a consumer's hello proves that its sender holds the admission key.

    Nonces of admitted hellos are remembered for twice the window (so a hello still within the window can
    never be replayed); only hellos with a valid proof are remembered, so nobody without the key can fill it.
    With ``record`` (a file path) they are remembered across restarts: each admission first writes every
    nonce still remembered to ``record`` (:func:`~beamstream.atomic.write_atomically`: complete, fsynced), and
    a HelloCheck made on the same ``record`` starts with the nonces whose time is not up. Raises SpillError
    naming ``record`` if it is damaged.
    """

    def __init__(self, admission: AdmissionKey, window_s: float = HELLO_WINDOW_S, record: Path | None = None) -> None:
        self.admission = admission
        self.window_s = window_s
        self.record = record
        # nonce → the time (buffer's clock) after which it may be forgotten, oldest first
        self.seen: dict[bytes, float] = read_admitted(record, time.time()) if record is not None else {}

    def refusal(self, hello: Hello, now: float | None = None) -> tuple[str, str] | None:
        """None if ``hello`` is admitted (its nonce is then remembered, and recorded first if there is a
        ``record``); else (kind, reason): the kind of refusal (``no proof``, ``wrong key``, ``clock``,
        ``replay``, ``unrecorded``: the record could not be written) and why, in words for its sender."""
        now = time.time() if now is None else now
        if (refused := proof_refusal(self.admission, hello)) is not None:
            return refused
        if abs(now - hello.at) > self.window_s:
            off = now - hello.at
            return "clock", (f"{ADMIT_ONLY_HOLDERS}: the hello was made {abs(off):.0f} s "
                             f"{'before' if off > 0 else 'after'} the buffer's time (at most {self.window_s:g} s "
                             "either way): set this machine's clock right, or send a fresh hello")
        self._forget_old(now)
        if hello.nonce in self.seen:
            return "replay", f"{ADMIT_ONLY_HOLDERS}: this hello was already used (a replay); send a fresh one"
        until = now + 2 * self.window_s
        if (unrecorded := self._record(hello.nonce, until)) is not None:
            return "unrecorded", unrecorded
        self.seen[hello.nonce] = until
        return None

    def _record(self, nonce: bytes, until: float) -> str | None:
        """Write the remembered nonces, and ``nonce`` with them, to ``record``; None once they are on disk (or
        without a record), else why they could not be written."""
        if self.record is None:
            return None
        try:
            write_atomically(self.record, msgspec.msgpack.encode({**self.seen, nonce: until}))
        except OSError as exc:
            return (f"the buffer cannot record the hellos it admits in {self.record} ({exc.strerror or exc}), "
                    "so it admits nobody until it can")
        return None

    def _forget_old(self, now: float) -> None:
        """Drop the nonces whose time is up (oldest first: they were added in the order of their times)."""
        while self.seen:
            nonce, until = next(iter(self.seen.items()))
            if until >= now:
                return
            del self.seen[nonce]


def read_admitted(path: Path, now: float) -> dict[bytes, float]:
    """The nonces that :class:`HelloCheck` recorded in ``path`` and whose time is not up at ``now``, oldest first
    (nonce → time after which it may be forgotten); {} if there is no such file.

    Raises SpillError naming ``path`` if it cannot be read or is damaged (it is written whole or not at all,
    so only something else can damage it).
    """
    try:
        recorded = msgspec.msgpack.decode(path.read_bytes(), type=dict[bytes, float])
    except FileNotFoundError:
        return {}
    except (OSError, msgspec.DecodeError) as exc:
        raise SpillError(f"{path}: cannot read the hellos this buffer admitted ({exc}); move the file away to go on "
                         f"once the buffer has been stopped {2 * HELLO_WINDOW_S:g} s (until then a hello it "
                         "admitted could be admitted again)") from None
    return dict(sorted(((nonce, until) for nonce, until in recorded.items() if until >= now), key=lambda item: item[1]))
