"""``Buffer``: what every buffer backend is — its producer side, the stream's account, running, metrics.

Backends: :class:`~beamstream.buffer.local.LocalBuffer` (groups served by this process) and
:class:`~beamstream.buffer.nats_bridge.NatsBridge` (the stream kept in NATS JetStream).
:func:`~beamstream.buffer.run.open_buffer` picks one from a
:class:`~beamstream.buffer.config.BufferConfig`.

Producers (the ``stream`` sink, push pattern) connect their DEALER to the producer ROUTER that
a buffer binds. Every backend reads their messages the same way: a message that is not a
beamstream message of this wire version, or whose payload does not match its checksum, is
refused with a ``beamstream-refused:`` reply that says why (and counted); a data message is acknowledged (``beamstream-kept INDEX``) and an end
message with ``beamstream-ack`` once the backend has kept it; a message that arrives again (a
producer resending after a reconnect) is acknowledged again and otherwise dropped; producers
that have begun a stream and then say nothing for ``producer_timeout_s`` without ending are
declared gone, so the stream's verdict can be given without them. A buffer serves one stream:
the first message names it, and a message of any other stream id is refused (runs never mix).
The first message that carries the stream's description sets ``metadata``, which each backend
passes on to readers that never see that message (:meth:`described`).
Each socket a buffer binds keeps at most ``max_connections`` connections
(:class:`~beamstream.buffer.connections.ConnectionLimit`).

Shared memory: a buffer whose producer endpoint is ``shm://PATH`` maps its producers' arenas (adopting each, so
that its own readers can map it after its producer ended; :class:`~beamstream.shared_memory.ArenaMaps`) and takes
each data message's payload as views of its slot, without a copy: :class:`Lease` says which slot, and
:meth:`release` tells the producer once the backend no longer needs it.

Admission: a buffer given its stream's ``admission`` key (:mod:`beamstream.buffer.admission`) takes only
sealed messages whose seal matches that key; any other is refused like an unreadable one, before it is
kept, spilled, forwarded or counted in the stream's account (so a forged end cannot end the stream).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from beamstream.accounting import StreamReport
from beamstream.buffer.connections import ConnectionLimit, connection_budget
from beamstream.buffer.metrics import MetricsServer, connection_metrics, intake_metrics
from beamstream.buffer.status import BufferStatus, status_of
from beamstream.errors import WireFormatError
from beamstream.logs import WarnOnce
from beamstream.shared_memory import ArenaMaps, read_slot
from beamstream.transport import bound_address, open_socket, shared
from beamstream.wire import DataHeader, DataMessage, EndMessage, parse_header, parse_message
from beamstream.wire.control import Verdict
from beamstream.wire.metadata import RunMetadata
from beamstream.wire.replies import ACK, kept, new_session, refused, released
from beamstream.wire.slots import SlotRef, encode_ref

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from beamstream.security.streamkey import AdmissionKey

logger = logging.getLogger(__name__)
MAX_ARENAS = 1024  # producers' arenas a buffer keeps mapped


class Lease(NamedTuple):
    """A producer's shared-memory slot that a kept message's payload frames are views of: the producer (its
    identity on the producer socket), the slot's ``generation``, the slot reference as the buffer's own readers
    get it (``ref``: the arena under the buffer's name for it), the ``arena``, the slot's ``nbytes`` in it, and the
    ``budget``: how many bytes of that arena the buffer holds at most for groups to come (half of it)."""

    producer: bytes
    generation: int
    ref: bytes
    arena: str
    nbytes: int
    budget: int


Received = tuple[bytes, list[Any], DataMessage | EndMessage, Lease | None]


class _Duplicate(Exception):
    """A data message already kept, sent again by its producer (its ``index``)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class Buffer(ABC):
    """A buffer between one stream's producers and its consumers, bound and ready once constructed.

    Run it with :meth:`serve` (blocks until :meth:`stop`) or :meth:`start` (on a thread);
    :meth:`close` stops it and releases its sockets, connections and metrics server.
    ``report`` is the stream's account, :meth:`verdict` the stream's verdict once its producers
    are done; :meth:`metrics` and :meth:`status` say what the buffer has done so far.
    Subclasses run their loop in :meth:`_serve` until :attr:`stopping`, and release what they
    hold in :meth:`_release`.
    """

    thread_name = "beamstream-buffer"

    def __init__(self, context: zmq.Context, producer_endpoint: str, *, hwm: int, bind: bool,
                 producer_timeout_s: float, max_message: int, max_connections: int, affinity: int = 0,
                 admission: AdmissionKey | None = None) -> None:
        self.context = context
        self.admission = admission  # the stream's admission key: only messages sealed with it are taken
        self.producer_endpoint = producer_endpoint
        self.producer_socket = open_socket(context, zmq.ROUTER, producer_endpoint, bind=bind, hwm=hwm,
                                           affinity=affinity, replies="out", max_message=max_message)
        self.max_connections = connection_budget(max_connections, sockets=2)
        self.connection_limits: list[ConnectionLimit] = []
        if bind:
            self.limit_connections(self.producer_socket, "producer")
        self.report = StreamReport(endpoints=[producer_endpoint])
        self.metadata: RunMetadata | None = None  # the stream's description, from the first message carrying one
        self.seen: set[tuple[int, int]] = set()  # (rank, index) of every data message kept
        self.counters = {"messages_in": 0, "bytes_in": 0, "rejected": 0, "duplicates": 0}
        self.warn_once = WarnOnce(logger)
        self.arenas = ArenaMaps(keep=MAX_ARENAS, adopt=True) if shared(producer_endpoint) else None
        self.session = new_session() if self.arenas is not None else ""  # said in each kept, over shared memory
        self.producer_timeout_s = producer_timeout_s
        self.last_producer_message = time.monotonic()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics_server: MetricsServer | None = None

    # --- what a backend provides ---------------------------------------------------------------

    @property
    def producer_address(self) -> str:
        """Where producers connect: the producer endpoint as bound (the port chosen, for port 0)."""
        return bound_address(self.producer_socket)

    @property
    @abstractmethod
    def consumer_address(self) -> str:
        """Where consumers read the stream: the consumer endpoint, or the ``nats://`` URL."""

    @abstractmethod
    def _serve(self) -> None:
        """Run the loop until :attr:`stopping`."""

    @abstractmethod
    def _release(self) -> None:
        """Close what the backend holds, after the loop has stopped."""

    @abstractmethod
    def backend_metrics(self) -> Iterator[Metric]:
        """The metrics only this backend has (the producer side's come from :meth:`metrics`)."""

    def limit_connections(self, listener: zmq.Socket, side: str) -> None:
        """Keep at most ``max_connections`` connections open on ``listener``, a socket this buffer binds."""
        self.connection_limits.append(ConnectionLimit(listener, self.max_connections, side))

    # --- running ----------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` (or :meth:`close`) was called."""
        return self._stopping.is_set()

    def serve(self) -> None:
        """Run the loop in this thread until :meth:`stop` is called (from another thread or a signal handler)."""
        self._serve()

    def start(self) -> Buffer:
        """Serve on a background thread; :meth:`close` stops it."""
        self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the loop to return; safe from any thread and from a signal handler."""
        self._stopping.set()

    def activity(self) -> tuple[int, int]:
        """(messages taken and handed out so far, readers attached now): whether anyone uses this buffer. A backend
        whose readers attach elsewhere (NATS) has none here."""
        return self.counters["messages_in"] + self.counters.get("messages_out", 0), 0

    def wait_stopping(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for :meth:`stop`; True if it was called."""
        return self._stopping.wait(seconds)

    def close(self) -> None:
        """Stop serving and release sockets, connections and the metrics server; safe to call once,
        after or without :meth:`start`."""
        self.stop()
        if self._thread is not None:
            self._thread.join()
        if self.metrics_server is not None:
            self.metrics_server.close()
        for limit in self.connection_limits:
            limit.close()
        self._release()
        self.producer_socket.close(linger=0)
        self.context.term()
        if self.arenas is not None:
            self.arenas.close()

    def serve_metrics(self, port: int, addr: str = "127.0.0.1") -> str:
        """Serve Prometheus metrics at ``http://ADDR:PORT/metrics`` (port 0: a free one) until :meth:`close`;
        returns the URL. Raises TransportError if the port cannot be bound."""
        self.metrics_server = MetricsServer(self, port, addr)
        return self.metrics_server.url

    # --- what it knows ------------------------------------------------------------------------

    def verdict(self) -> Verdict | None:
        """The stream's verdict once its producers are done (see :meth:`producers_done`), else None."""
        return self.report.final_verdict() if self.producers_done() else None

    def metrics(self) -> Iterator[Metric]:
        """Every metric of this buffer as it is now (names in :mod:`beamstream.buffer.metrics`)."""
        yield from intake_metrics(self.counters, self.report)
        yield from connection_metrics(self.connection_limits)
        yield from self.backend_metrics()

    def status(self) -> BufferStatus:
        """The same figures as :meth:`metrics`, as ``beamstream buffer status`` shows them."""
        return status_of(self.metrics())

    # --- the producer side ---------------------------------------------------------------------

    def receive(self, frames: list[zmq.Frame]) -> Received | None:
        """(producer identity, message frames, parsed header, its lease on a shared-memory slot) of what a producer
        sent; None if refused or already kept."""
        identity = frames[0].bytes
        self.last_producer_message = time.monotonic()
        lease = None
        try:
            message_frames, lease = self._mapped(identity, frames[1:])
            message = self.parse(message_frames)
        except WireFormatError as exc:  # SealRefused too
            self._refuse(identity, str(exc))
            return None
        except _Duplicate as duplicate:
            self.counters["duplicates"] += 1
            self.producer_socket.send_multipart([identity, kept(duplicate.index, self.session)])
            return None
        if self.report.stream is not None and message.stream != self.report.stream:
            self._refuse(identity, f"this buffer serves stream {self.report.stream!r}; stream {message.stream!r} "
                                   "needs a buffer of its own (start another one, or give its producers this stream's id)")
            return None
        if (reason := self.report.refusal(message)) is not None:
            self._refuse(identity, reason)
            return None
        if isinstance(message, DataMessage) and (message.rank, message.index) in self.seen:
            self.counters["duplicates"] += 1
            self.producer_socket.send_multipart([identity, kept(message.index, self.session)])
            if lease is not None:
                self.release(lease)
            return None
        return identity, message_frames, message, lease

    def _mapped(self, identity: bytes, frames: list[Any]) -> tuple[list[Any], Lease | None]:
        """A producer's message frames with its payload as views of its shared-memory slot, and the lease on that
        slot (without shared memory: as they came, and None). WireFormatError for a reference that cannot be
        mapped; _Duplicate for a message already kept whose slot is gone (sent again after a reconnect)."""
        if self.arenas is None:
            return frames, None
        try:
            mapped, ref = read_slot(self.arenas, frames)
        except WireFormatError:
            header = parse_header(frames[0])
            if isinstance(header, DataHeader) and (header.rank, header.index) in self.seen:
                raise _Duplicate(header.index) from None
            raise
        if ref is None:
            return frames, None
        ours = SlotRef(arena=self.arenas.alias(ref.arena), generation=ref.generation, offset=ref.offset,
                       sizes=ref.sizes)
        return mapped, Lease(identity, ref.generation, encode_ref(ours), ref.arena, ref.end - ref.offset,
                                            self.arenas.size(ref.arena) // 2)

    def release(self, lease: Lease) -> None:
        """Tell a producer that its slot ``lease`` names is free (dropped silently if the producer is gone)."""
        self.producer_socket.send_multipart([lease.producer, released(lease.generation)])

    def parse(self, frames: list[zmq.Frame]) -> DataMessage | EndMessage:
        """The message in a producer's ``frames``; WireFormatError if it may not be taken: SealRefused, with the
        admission key, for one not sealed with it (its payload then stays encrypted: the buffer cannot read it,
        and a sealed message has no checksum, its seal authenticates it)."""
        return parse_message(frames, verify=True, admission=self.admission)  # a corrupt payload must not reach a group

    def _refuse(self, identity: bytes, reason: str) -> None:
        """Tell a producer its message was refused and why; count it, and log it once per reason."""
        self.counters["rejected"] += 1
        self.warn_once(reason, "refused a message from producer %s: %s", identity.hex(), reason)
        self.producer_socket.send_multipart([identity, refused(reason)])

    def acknowledge(self, identity: bytes, message: DataMessage | EndMessage) -> None:
        """Account for a message the backend has kept, and tell its producer so."""
        self.account(message)
        if isinstance(message, EndMessage):
            self.producer_socket.send_multipart([identity, ACK])
            return
        self.counters["messages_in"] += 1
        self.counters["bytes_in"] += message.nbytes
        self.producer_socket.send_multipart([identity, kept(message.index, self.session)])

    def account(self, message: DataMessage | EndMessage) -> None:
        """Add a kept message to the stream's account (also for messages kept before a restart)."""
        if isinstance(message, EndMessage):
            self.report.add_end(message)
        else:
            self.report.add_data(message)
            self.seen.add((message.rank, message.index))
            if message.metadata is not None and self.metadata is None:
                self.metadata = message.metadata
                self.described()

    def described(self) -> None:
        """Called once the stream's description (``metadata``) is known: a backend passes it on."""

    def producers_done(self) -> bool:
        """True once every producer has ended, or those that began a stream without ending have been
        silent for ``producer_timeout_s``: the stream's verdict can be given."""
        if self.report.producers is None:
            return False
        silent = time.monotonic() - self.last_producer_message > self.producer_timeout_s
        return self.report.all_ended or silent
