"""``NatsBridge``: the buffer with ``--backend nats://HOST:PORT/NAME``: producers in, the stream kept in NATS.

The URL may name several servers of one cluster and how many of them keep the stream:
``nats://H1:P1,H2:P2,H3:P3/NAME?replicas=3`` (:func:`~beamstream.jetstream.urls.split_url`).

Producers connect exactly as to the local buffer (the ``stream`` sink's DEALER to this ROUTER);
consumers do not connect here but read JetStream stream ``BEAMSTREAM_<NAME>`` themselves
(``Client("nats://HOST:PORT/NAME", group=...)``), from any machine that reaches the server.
Layout of the stream: :mod:`beamstream.wire.nats`.

Promises:

- **Accepted means stored by a quorum.** A producer's message is acknowledged (``kept``) only once
  JetStream's PubAck for it came back: with ``?replicas=N`` in the URL the stream is kept on N servers
  and the PubAck is sent once a majority of them wrote the message, so it survives losing any
  minority of the servers. Given several servers (``nats://H1:P1,H2:P2,H3:P3/NAME``), the bridge
  reaches the cluster through whichever answers.
- **Several in flight, in order.** Up to ``window`` messages are being stored at once (their parts'
  PubAcks awaited together), in the order they came: each message's data (or end) record is published
  only once the one before it is stored, and producers are answered in that order. With ``?streams=N``
  in the URL the data messages are spread over N JetStream streams by log position (the order they are
  stored in: message p in shard ``p % N``, header ``Bs-Pos``; :mod:`beamstream.wire.nats`); ends,
  verdict and description stay in the first.
- **Backpressure, bounded memory.** Once ``window`` messages are in flight the next is read from
  the producers only when the oldest is stored; producers block on their HWM while NATS is
  slower. The bridge holds at most ``window`` messages (each once more, joined, while it is
  published), plus ZeroMQ's ``hwm`` queued messages per producer.
- **Nothing accepted is dropped.** If the server fails or the stream is full, the messages in
  hand are kept and stored again, in order, every ``retry_s`` (producers blocked meanwhile), with one
  warning per outage; meanwhile the connection moves to another server of the cluster (or waits
  for the one server to come back, a minute at most, before the next attempt connects afresh). A
  second copy that reached the server anyway is dropped by it (``Nats-Msg-Id``).
- **Nothing lost passes as stored.** If the server holds another record under a message's id (so
  it dropped the message as a duplicate: someone else published under that id first), the message
  is not accounted as stored: it is counted (``displaced``), logged, named in the verdict, which then
  never says complete, and acknowledged to its producer (sent again within the server's duplicate
  window, it would meet the same record).
  On a sealed stream nobody without the stream's credentials can know a message's id before it is
  stored (:class:`~beamstream.wire.nats.MessageIds`), so nobody else can displace one.
- **End of stream.** A producer's end message is acknowledged once stored. When every producer
  has ended, or those that have not said nothing for ``producer_timeout_s``, the verdict on
  everything stored is written to the stream, and again whenever it changes.
- **Admission.** Given the stream's ``admission`` key, the bridge stores only producer messages sealed
  with it (:class:`~beamstream.buffer.base.Buffer`); others are refused and never reach NATS. Consumers
  read from the NATS server, not from the bridge: who may read is the server's own accounts and
  permissions (docs/nats-backend.md); the payloads they read stay sealed with the stream key.
- **Restart.** A new bridge on the same stream first reads what is stored (headers only, and
  seals: with the admission key, only records sealed with it count) so that its verdict covers
  the messages stored before it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq
from prometheus_client.core import CounterMetricFamily, Metric

from beamstream.buffer.base import Buffer, Received
from beamstream.buffer.metrics import PREFIX, nats_metrics
from beamstream.errors import TransportError
from beamstream.jetstream.store import MessageIdTaken, NatsStore
from beamstream.jetstream.connection import NatsConnection
from beamstream.jetstream.urls import split_url, spread
from beamstream.transport import DEFAULT_MAX_MESSAGE
from beamstream.wire import DataMessage, EndMessage
from beamstream.wire.control import Verdict
from beamstream.wire.replies import ACK, kept

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey

logger = logging.getLogger(__name__)
WINDOW = 8  # messages being stored at once: a producer has at most 2 × hwm + 2 (10) unacknowledged


@dataclass
class _Flight:
    """A message being stored: what its producer sent, its log position (None: an end), the store's future, and
    copies of it sent again meanwhile (identity and lease of each: answered once it is stored)."""

    received: Received
    position: int | None
    conn: NatsConnection | None = None
    future: concurrent.futures.Future[int] | None = None
    copies: list[tuple[bytes, Any]] = field(default_factory=list)

    def failed(self) -> bool:
        """True once it was submitted and was not stored: its future cancelled, or raising (not MessageIdTaken)."""
        if self.future is None or not self.future.done():
            return False
        return self.future.cancelled() or not isinstance(self.future.exception(), (MessageIdTaken, type(None)))


class NatsBridge(Buffer):
    """The buffer whose stream NATS keeps; run and stop it as every :class:`Buffer`."""

    thread_name = "beamstream-nats-bridge"

    def __init__(self, producer_endpoint: str, url: str, *, hwm: int = 4, bind: bool = True,
                 retention_s: float | None = None, max_bytes: int | None = None,
                 producer_timeout_s: float = 60.0, retry_s: float = 1.0, timeout: float = 10.0,
                 max_message: int = DEFAULT_MAX_MESSAGE, max_connections: int = 4096,
                 admission: AdmissionKey | None = None, window: int = WINDOW) -> None:
        self.url = url
        self.server, self.name, replicas = split_url(url)
        self.store_options: dict[str, Any] = {"timeout": timeout, "max_age_s": retention_s, "max_bytes": max_bytes,
                                              "admission": admission, "replicas": replicas, "streams": spread(url)}
        self.store: NatsStore | None = NatsStore(self.server, self.name, **self.store_options)
        try:
            super().__init__(zmq.Context(), producer_endpoint, hwm=hwm, bind=bind, producer_timeout_s=producer_timeout_s,
                             max_message=max_message, max_connections=max_connections, admission=admission)
        except BaseException:
            self._drop_store()
            raise
        for message in self.store.stored():
            self.account(message)
        if self.report.producers is not None:
            logger.info("%s holds %d messages of stream %s already", url, self.report.messages, self.report.stream)
        self.positions = self.store.positions  # the next data message's log position
        self.retry_s = retry_s
        self.window = window
        self.flights: deque[_Flight] = deque()  # in the order received
        self.flying: dict[tuple[int, int | None], _Flight] = {}  # the flights by (rank, index)
        self.retry_at: float | None = None  # in an outage: when to submit the flights again
        self.wake_read, self.wake_write = os.pipe()  # written when a flight is done
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.outage: str | None = None
        self.metadata_stored = False
        self.displaced: dict[tuple[int, int | None], str] = {}  # (rank, index; None: its end) → what NATS refused
        self.verdict_for: tuple[int, int, int] | None = None  # (messages, ended, displaced) the stored verdict covers

    def _release(self) -> None:
        """Close the connection; messages still not stored are named in a warning (they were not acknowledged,
        so their producers send them again to the next buffer they connect to)."""
        if self.flights:
            logger.warning("stopped before NATS stored %d message(s), not acknowledged to their producers: %s",
                           len(self.flights), ", ".join(_what(flight.received[2]) for flight in self.flights))
        self._drop_store()
        if self.wake_read >= 0:  # released once (stop may come twice)
            os.close(self.wake_read)
            os.close(self.wake_write)
            self.wake_read = self.wake_write = -1

    @property
    def consumer_address(self) -> str:
        return self.url

    def backend_metrics(self) -> Iterator[Metric]:
        yield CounterMetricFamily(PREFIX + "displaced_messages", "Producer messages NATS did not store because "
                                  "another record held their message id (named in the verdict).",
                                  value=len(self.displaced))
        yield from nats_metrics(self.store)

    def _serve(self, poll_ms: int = 100) -> None:
        poller = zmq.Poller()
        poller.register(self.wake_read, zmq.POLLIN)
        while not self.stopping:
            self._settle()
            if self.retry_at is not None and not any(flight.future and not flight.future.done()
                                                     for flight in self.flights):
                if time.monotonic() < self.retry_at:
                    self.wait_stopping(self.retry_at - time.monotonic())
                    continue
                self._submit_again()
            taking = self.retry_at is None and len(self.flights) < self.window
            poller.register(self.producer_socket, zmq.POLLIN if taking else 0)  # 0: not polled
            ready = dict(poller.poll(poll_ms))
            if self.wake_read in ready:
                os.read(self.wake_read, 4096)
            if taking and self.producer_socket in ready:
                received = self.receive(self.producer_socket.recv_multipart(copy=False))
                if received is not None:
                    self._take(received)
            self._write_metadata()
            self._write_verdict()

    def _take(self, received: Received) -> None:
        """Start storing a message a producer sent, after those in flight (one already in flight: a copy, answered
        as one when the first is stored)."""
        identity, _, message, lease = received
        if (flying := self.flying.get(_key(message))) is not None:
            flying.copies.append((identity, lease))
            return
        position = None
        if isinstance(message, DataMessage):
            position, self.positions = self.positions, self.positions + 1
        self.flights.append(_Flight(received, position))
        self.flying[_key(message)] = self.flights[-1]
        if self.retry_at is None:
            self._submit(self.flights[-1])

    def _submit(self, flight: _Flight, fresh: bool = False) -> None:
        """Hand a message to the store (connecting first if need be); a failure to connect starts an outage."""
        try:
            if self.store is None:
                self.store = NatsStore(self.server, self.name, **self.store_options)
            _, frames, message, _ = flight.received
            flight.conn = self.store.conn
            flight.future = self.store.submit(frames, message, flight.position or 0, fresh=fresh)
        except TransportError as exc:
            self._outage(exc)
            return
        flight.future.add_done_callback(self._wake)

    def _wake(self, _: Any) -> None:
        """A flight is done (on the store's loop): wake the serving thread."""
        try:
            os.write(self.wake_write, b"\0")
        except (BlockingIOError, OSError):  # full: a wake is waiting already; closed: stopping
            pass

    def _settle(self) -> None:
        """Answer the producers of the flights done, oldest first, up to the first one not done; one that failed
        starts an outage (those after it fail too: each waits for the one before)."""
        while self.retry_at is None and self.flights and self.flights[0].future is not None \
                and self.flights[0].future.done():
            flight = self.flights[0]
            identity, _, message, lease = flight.received
            assert flight.conn is not None and flight.future is not None
            try:
                if flight.future.cancelled():
                    raise TransportError(f"{self.url}: storing {_what(message)} was cancelled")
                flight.conn.result(flight.future, 0)
            except TransportError as exc:
                self._outage(exc)
                return
            except MessageIdTaken as exc:
                self._displace(identity, message, str(exc))
            else:
                self.displaced.pop(_key(message), None)  # stored after all: resent once the server forgot the id
                self.acknowledge(identity, message)
            if self.outage is not None:
                logger.warning("NATS stores again after: %s", self.outage)
                self.outage = None
            for number, (copy, copy_lease) in enumerate([(identity, lease), *flight.copies]):
                if copy_lease is not None:  # NATS has the payload now: the producer's shared memory may be reused
                    self.release(copy_lease)
                if number:  # a copy sent again: answered as the base answers one already kept
                    self.counters["duplicates"] += 1
                    self.producer_socket.send_multipart([copy, ACK if isinstance(message, EndMessage) else
                                                         kept(message.index, self.session)])
            self.flights.popleft()
            del self.flying[_key(message)]

    def _outage(self, exc: TransportError) -> None:
        """The server did not store a message: keep every flight, submit them again in ``retry_s``."""
        if self.outage is None:
            logger.warning("could not store in NATS (retrying every %g s, producers wait): %s", self.retry_s, exc)
        self.outage = str(exc)
        self.retry_at = time.monotonic() + self.retry_s

    def _submit_again(self) -> None:
        """After an outage, once no flight is in progress: submit again, in order, those not stored."""
        self.retry_at = None
        if self.store is not None and self.store.conn.closed:
            self._drop_store()  # given up reconnecting: the next attempt connects afresh
        first = True
        for flight in self.flights:
            if flight.future is None or flight.failed():
                self._submit(flight, fresh=first)  # not held back by the failures before the outage
                first = False
                if self.retry_at is not None:
                    return

    def _displace(self, identity: bytes, message: DataMessage | EndMessage, reason: str) -> None:
        """A message NATS did not store because another record holds its id: remembered for the verdict (once,
        however often its producer sends it), logged, left out of the account, and acknowledged to its producer."""
        key = _key(message)
        self.displaced.setdefault(key, f"NATS did not store {_what(message)}: {reason} (published by someone else?)")
        logger.error("%s", self.displaced[key])
        self.producer_socket.send_multipart([identity, ACK if isinstance(message, EndMessage) else kept(message.index)])

    def _drop_store(self) -> None:
        """Close the store (after its connection gave up, or when stopping); the next attempt connects afresh."""
        store, self.store = self.store, None
        if store is not None:
            try:
                store.close()
            except TransportError:
                pass  # the connection is already gone

    def described(self) -> None:
        self.metadata_stored = False

    def _write_metadata(self) -> None:
        """Store the stream's description once it is known (retried while the server does not take it)."""
        if self.store is None or self.metadata is None or self.metadata_stored:
            return
        try:
            self.store.write_metadata(self.metadata)
        except TransportError as exc:
            logger.warning("could not store the stream's description in NATS (will retry): %s", exc)
            return
        self.metadata_stored = True

    def verdict(self) -> Verdict | None:
        """The stream's verdict once its producers are done, else None; never complete while a message is displaced."""
        return self._final_verdict() if self.producers_done() else None

    def _final_verdict(self) -> Verdict:
        """The account's verdict, never complete while a message is displaced (each one named in its summary)."""
        verdict = self.report.final_verdict()
        if not self.displaced:
            return verdict
        return Verdict(complete=False, summary="\n".join([verdict.summary, *self.displaced.values()]),
                       missing=verdict.missing)

    def _write_verdict(self) -> None:
        """Write the verdict once the producers are done (all ended, or silent too long), and again
        whenever a message arrives or is displaced after that (it is computed only then, not on every idle poll)."""
        state = (self.report.messages, len(self.report.ended), len(self.displaced))
        if self.store is None or state == self.verdict_for or not self.producers_done():
            return
        verdict = self._final_verdict()
        try:
            self.store.write_verdict(verdict)
        except TransportError as exc:
            logger.warning("could not store the verdict in NATS (will retry): %s", exc)
            return
        self.verdict_for = state
        logger.info("verdict stored: %s", verdict.summary.splitlines()[0])


def _what(message: DataMessage | EndMessage) -> str:
    """A message named for a person: ``message 2 of producer 0 (events 8-11)`` or ``the end of producer 0``."""
    return (f"the end of producer {message.rank}" if isinstance(message, EndMessage) else
            f"message {message.index} of producer {message.rank} (events {message.first_seq}-{message.last_seq})")


def _key(message: DataMessage | EndMessage) -> tuple[int, int | None]:
    """(rank, index) of a data message, (rank, None) of an end message."""
    return message.rank, None if isinstance(message, EndMessage) else message.index
