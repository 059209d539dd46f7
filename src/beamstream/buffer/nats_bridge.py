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
- **Backpressure, bounded memory.** One message is stored at a time, and the next is read from
  the producers only once the server has stored it; producers block on their HWM while NATS is
  slower. The bridge holds at most the message being stored, plus ZeroMQ's ``hwm`` queued
  messages per producer.
- **Nothing accepted is dropped.** If the server fails or the stream is full, the message in
  hand is kept and stored again every ``retry_s`` (producers blocked meanwhile), with one
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

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import zmq
from prometheus_client.core import CounterMetricFamily, Metric

from beamstream.buffer.base import Buffer, Received
from beamstream.buffer.metrics import PREFIX, nats_metrics
from beamstream.errors import TransportError
from beamstream.jetstream.store import MessageIdTaken, NatsStore
from beamstream.jetstream.urls import split_url
from beamstream.transport import DEFAULT_MAX_MESSAGE
from beamstream.wire import DataMessage, EndMessage
from beamstream.wire.control import Verdict
from beamstream.wire.replies import ACK, kept

if TYPE_CHECKING:
    from beamstream.security.streamkey import AdmissionKey

logger = logging.getLogger(__name__)


class NatsBridge(Buffer):
    """The buffer whose stream NATS keeps; run and stop it as every :class:`Buffer`."""

    thread_name = "beamstream-nats-bridge"

    def __init__(self, producer_endpoint: str, url: str, *, hwm: int = 4, bind: bool = True,
                 retention_s: float | None = None, max_bytes: int | None = None,
                 producer_timeout_s: float = 60.0, retry_s: float = 1.0, timeout: float = 10.0,
                 max_message: int = DEFAULT_MAX_MESSAGE, max_connections: int = 4096,
                 admission: AdmissionKey | None = None) -> None:
        self.url = url
        self.server, self.name, replicas = split_url(url)
        self.store_options: dict[str, Any] = {"timeout": timeout, "max_age_s": retention_s, "max_bytes": max_bytes,
                                              "admission": admission, "replicas": replicas}
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
        self.retry_s = retry_s
        self.pending: Received | None = None
        self.outage: str | None = None
        self.metadata_stored = False
        self.displaced: dict[tuple[int, int | None], str] = {}  # (rank, index; None: its end) → what NATS refused
        self.verdict_for: tuple[int, int, int] | None = None  # (messages, ended, displaced) the stored verdict covers

    def _release(self) -> None:
        """Close the connection; a message still not stored is named in a warning (it was not acknowledged,
        so its producer sends it again to the next buffer it connects to)."""
        if self.pending is not None:
            message = self.pending[2]
            logger.warning("stopped before NATS stored a message of producer %d (%s); not acknowledged to it",
                        message.rank, f"index {message.index}" if isinstance(message, DataMessage) else "its end")
        self._drop_store()

    @property
    def consumer_address(self) -> str:
        return self.url

    def backend_metrics(self) -> Iterator[Metric]:
        yield CounterMetricFamily(PREFIX + "displaced_messages", "Producer messages NATS did not store because "
                                  "another record held their message id (named in the verdict).",
                                  value=len(self.displaced))
        yield from nats_metrics(self.store)

    def _serve(self, poll_ms: int = 100) -> None:
        while not self.stopping:
            if self.pending is not None and not self._store_pending():
                self.wait_stopping(self.retry_s)
                continue
            if self.producer_socket.poll(poll_ms):
                self.pending = self.receive(self.producer_socket.recv_multipart(copy=False))
                if self.pending is not None:
                    self._store_pending()
            self._write_metadata()
            self._write_verdict()

    def _store_pending(self) -> bool:
        """Store the message in hand; False (and keep it) if the server did not take it."""
        assert self.pending is not None
        identity, frames, message, lease = self.pending
        try:
            if self.store is None:
                self.store = NatsStore(self.server, self.name, **self.store_options)
            self.store.append(frames, message)
        except TransportError as exc:
            if self.outage is None:
                logger.warning("could not store in NATS (retrying every %g s, producers wait): %s", self.retry_s, exc)
            self.outage = str(exc)
            if self.store is not None and self.store.conn.closed:
                self._drop_store()  # given up reconnecting: the next attempt connects afresh
            return False
        except MessageIdTaken as exc:
            self._displace(identity, message, str(exc))
        else:
            self.displaced.pop(_key(message), None)  # stored after all: resent once the server forgot the id
            self.acknowledge(identity, message)
        if self.outage is not None:
            logger.warning("NATS stores again after: %s", self.outage)
            self.outage = None
        if lease is not None:  # NATS has the payload now: the producer's shared memory may be reused
            self.release(lease)
        self.pending = None
        return True

    def _displace(self, identity: bytes, message: DataMessage | EndMessage, reason: str) -> None:
        """A message NATS did not store because another record holds its id: remembered for the verdict (once,
        however often its producer sends it), logged, left out of the account, and acknowledged to its producer."""
        what = (f"the end of producer {message.rank}" if isinstance(message, EndMessage) else
                f"message {message.index} of producer {message.rank} (events {message.first_seq}-{message.last_seq})")
        key = _key(message)
        self.displaced.setdefault(key, f"NATS did not store {what}: {reason} (published by someone else?)")
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


def _key(message: DataMessage | EndMessage) -> tuple[int, int | None]:
    """(rank, index) of a data message, (rank, None) of an end message."""
    return message.rank, None if isinstance(message, EndMessage) else message.index
