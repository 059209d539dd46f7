"""The exceptions beamstream raises.

    BeamstreamError
    ├── SpecError (ValueError)            a stream spec is malformed or names something unknown
    ├── SourceError (ValueError)          a source cannot read what the spec asks for
    │                                     (missing file, unknown detector, absent dataset)
    ├── StepError (ValueError)            a processing step cannot apply to the data it got
    ├── MissingDependency (ImportError)   an optional package is not installed
    ├── OptionError (ValueError)          an option was given that does not apply (e.g. lossy= without a group)
    ├── WireFormatError (ValueError)      a message does not follow docs/wire-format.md
    │   └── ChecksumMismatch              a payload's checksum does not match its header
    ├── TransportError (ConnectionError)  a socket could not be bound, connected or used
    │   └── StreamTimeout (TimeoutError)  nothing arrived (or could be sent) within the timeout
    ├── StreamIncomplete                  a stream ended, or went silent, with events missing
    ├── AuthorityError (ValueError)       the certificate authority (``beamstream ca``) refused: its directory
    │                                     or a key is missing or unsafe, a name, serial or validity is wrong
    └── ServiceError                      the request service refused a request (its status and words),
        │                                 or could not be reached
        └── StreamEnded                   a requested stream ended before it ran (failed or cancelled)

Library code raises these; only the CLI turns them into messages and exit codes.
"""

from __future__ import annotations

from typing import Any


class BeamstreamError(Exception):
    """Base class of every error beamstream raises on purpose."""


class SpecError(BeamstreamError, ValueError):
    """A stream spec is malformed; the message lists every problem with its location."""


class SourceError(BeamstreamError, ValueError):
    """A source cannot read what its spec asks for."""


class StepError(BeamstreamError, ValueError):
    """A processing step cannot be applied to the events it received."""


class MissingDependency(BeamstreamError, ImportError):
    """An optional dependency is not installed; the message says what to install (:func:`needs_extra`)."""


def needs_extra(what: str, extra: str, *, package: str | None = None, cause: object = None) -> str:
    """The message for ``what`` lacking beamstream's optional ``extra`` (a name in pyproject.toml's
    ``[project.optional-dependencies]``), naming the ``package`` it lacks and the ``cause`` if given:
    ``the NATS backend needs nats-py: pip install 'beamstream[nats]' (No module named 'nats')``."""
    needed = package or f"the {extra!r} extra"
    return f"{what} needs {needed}: pip install 'beamstream[{extra}]'" + (f" ({cause})" if cause else "")


class OptionError(BeamstreamError, ValueError):
    """An option was given where it does not apply; the message says where it does."""


class WireFormatError(BeamstreamError, ValueError):
    """A message does not follow the wire format (docs/wire-format.md)."""


class ChecksumMismatch(WireFormatError):
    """The payload of a message does not match the checksum in its header."""


class SealRefused(WireFormatError):
    """A message of a sealed stream that its key does not open: unsealed, forged, altered, or of another stream."""


class TransportError(BeamstreamError, ConnectionError):
    """A socket could not be bound, connected or used."""


class StreamTimeout(TransportError, TimeoutError):
    """Nothing arrived from (or could be sent to) an endpoint within the timeout."""


class StreamIncomplete(BeamstreamError):
    """A stream ended, or went silent, without every event it announced.

    ``report`` is the :class:`~beamstream.accounting.StreamReport` that says which
    producers ended and which sequence numbers never arrived. (Typed loosely so that this
    module, imported by every other, imports none of them.) It is None where the error was
    made again from its message alone in another process, as a PyTorch DataLoader does with
    its workers' errors (see :mod:`beamstream.torch`).
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class ServiceError(BeamstreamError):
    """The request service refused a request, or could not be reached.

    ``status`` is the HTTP status of the answer (None when none came); ``detail`` the service's
    own words (every problem of a refused spec, one a line).
    """

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class StreamEnded(ServiceError):
    """A requested stream ended (failed or cancelled) before it ran; the message gives the reason."""


class AuthorityError(BeamstreamError, ValueError):
    """The certificate authority cannot do what was asked; the message names the file, name or value and what
    to do instead (e.g. the ``chmod`` that makes a directory safe)."""
