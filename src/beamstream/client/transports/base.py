"""What every transport gives the Client (deliveries of raw message frames, then the end of the stream), and
what each declares: the options it takes (:class:`Options`), and where they apply, for the refusal of the others."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypedDict

from beamstream.errors import OptionError
from beamstream.wire import DataMessage, EndMessage
from beamstream.wire.control import Verdict
from beamstream.wire.metadata import RunMetadata

if TYPE_CHECKING:
    from beamstream.security.streamkey import StreamKey

DEFAULT_HWM = 4  # messages queued in a direct reader, or handed to a group member before it acknowledges one


class Options(TypedDict, total=False):
    """How ``Client(endpoint, **options)`` reads: the options that pick and shape its transport.

    An option left at its default (None, False, ``pattern="pull"``) counts as not given. Each transport takes
    some (:attr:`Transport.takes`); one given where it does not apply raises OptionError naming where it does.

    Attributes:
        bind: bind the endpoints instead of connecting (producers then connect). Direct only.
        pattern: ``pull`` (default) or ``sub`` (broadcast streams). Either way the client acknowledges each
            end-of-stream message upstream, so producers close only once it arrived. Direct only.
        hwm: messages queued in this client before the sender waits (default 4); for a group member (a
            buffer's or the relay's), how many messages the buffer may hand it before it acknowledges one.
        group: read as a member of this consumer group (of a buffer: tcp://, ipc://, inproc://; of a service's
            stream, through its relay: http(s)://; of a nats:// stream): members of a group share the messages,
            every group gets all of them. A message is acknowledged when the application asks for the next one,
            so one a client was still working on when it died goes to another member.
        lossy: always hand over the newest message, skipping older ones (counted in ``report.skipped``), e.g.
            for a live viewer. With a group, or a nats:// stream.
        start: where a group that does not exist yet starts: ``earliest`` (default) message held, or ``now``.
        redeliver_after: for a lossless group of a nats:// stream that this client creates, seconds after which
            a message a member has not acknowledged goes to another member (default 30; the local buffer instead
            notices a departed member within a second).
        max_message: the largest frame (relay: message) this client takes (default 1 GiB); a sender of a larger
            one is disconnected before it is allocated. Not for nats:// (its server bounds its own messages).
        copy: shm:// only: copy each message out of shared memory as it arrives and release its slot at once,
            instead of handing out read-only views of the slot, valid until the application asks for the next
            message (the slot is then released, and its producer reuses it).
        tls: ``(cert, key, ca)`` for an ``https://`` stream of a service with mutual TLS: the client certificate
            and key (PEM; both or neither) and the CA certificate that verifies the service (None: the system's).
        token: a bearer token of that service (``POST /v1/tokens``), for a reader without a certificate
            (``tls=(None, None, ca)``); sent in the relay's ``Authorization`` header. ``https://`` only.
    """

    bind: bool
    pattern: Literal["pull", "sub"]
    hwm: int
    group: str
    lossy: bool
    start: Literal["earliest", "now"]
    redeliver_after: float
    max_message: int
    copy: bool
    tls: tuple
    token: str


LABELS = {"endpoints": "a second endpoint", "pattern": "pattern='sub'", "tls": "tls=(cert, key, ca)"}
"""How an option is named in a refusal, where not by its name (``endpoints``: more than one endpoint)."""


def refusal(option: str, scope: str, endpoints: Sequence[str], options: Options, why: str | None = None) \
        -> OptionError:
    """The OptionError for ``option``, given with ``endpoints`` and ``options``, which applies only ``scope``."""
    given = ", ".join(endpoints) + (f" with group={options['group']!r}" if "group" in options else "")
    return OptionError(f"{LABELS.get(option, option)} applies only {scope}; it was given for {given}"
                       + (f" ({why})" if why else ""))


def _nothing(*args: Any) -> None:
    return None


@dataclass(slots=True)
class Delivery:
    """One message's frames as they arrived.

    ``receipt(message)`` is called once the frames are parsed (a direct transport tells the
    producer it has the message), or ``refuse(reason)`` instead when the Client will not take
    it (a message of another stream: a direct transport tells its producer why); ``done()``
    once the application asks for the next message (a group member acknowledges it, so a
    message being worked on when a consumer dies goes to another member). ``skipped``: the
    running count of messages a lossy reader skipped, where the transport knows it. ``problem``: why the
    transport could not read the message's frames (the Client refuses it, saying so).
    """

    frames: list[Any]
    receipt: Callable[[DataMessage | EndMessage], None] = _nothing
    refuse: Callable[[str], None] = _nothing
    done: Callable[[], None] = _nothing
    skipped: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The stream has ended for this reader: a buffer's verdict on it, and the final skipped count."""

    verdict: Verdict
    skipped: int | None = None


Silence = None
"""Yielded by :meth:`Transport.deliveries` when nothing arrived for the timeout (the Client then raises)."""


class Transport(ABC):
    """A way of reading one stream.

    ``where`` names it in messages (endpoints or URL). ``ends_with_verdict``: True if the
    stream ends when the transport yields a :class:`StreamEnd` (a buffer decides), False if it
    ends when every producer's end message has arrived (the Client decides).

    A transport that ``Client(endpoint, **options)`` may pick (:mod:`~beamstream.client.transports.schemes`)
    declares the :class:`Options` it ``takes`` (``endpoints``: more than one), its ``scope`` (where they apply,
    finishing "<option> applies only ..."), the narrower ``scopes`` of options it takes only in some cases, and
    why it ``refuses`` others where that helps; :meth:`from_options` builds it and checks those cases.
    """

    where: str
    ends_with_verdict: bool
    takes: ClassVar[frozenset[str]] = frozenset()
    scope: ClassVar[str] = ""
    scopes: ClassVar[Mapping[str, str]] = {}
    refuses: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_options(cls, endpoints: list[str], options: Options, key: StreamKey | None) -> Transport:
        """This transport reading ``endpoints`` with ``options`` (given ones only, all in :attr:`takes`); ``key``
        is the stream's key (a group member proves to its buffer that it holds it). OptionError for an option
        it takes only in some cases, given in another (named by :attr:`scopes`)."""
        raise OptionError(f"{cls.__name__} is made by its constructor; read through it with Client(transport=...)")

    def metadata(self) -> RunMetadata | None:
        """The stream's description where the transport learns it apart from the messages (a buffer
        sends or stores it), else None."""
        return None

    @abstractmethod
    def deliveries(self, timeout: float | None) -> Iterator[Delivery | StreamEnd | None]:
        """Deliveries as they come; :data:`Silence` (None) after ``timeout`` seconds without one."""

    @abstractmethod
    def close(self) -> None:
        """Release sockets and connections; safe to call twice."""
