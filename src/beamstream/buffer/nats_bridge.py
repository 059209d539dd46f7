"""``NatsBridge``: the buffer with ``--backend nats://HOST:PORT/NAME``: producers in, the stream kept in NATS.

Producers connect exactly as to the local buffer (the ``stream`` sink's DEALER to this ROUTER);
consumers do not connect here but read JetStream stream ``BEAMSTREAM_<NAME>`` themselves
(``Client("nats://HOST:PORT/NAME", group=...)``), from any machine that reaches the server.
Layout of the stream: :mod:`beamstream.wire.nats`.

Promises:

- **Backpressure, bounded memory.** One message is stored at a time, and the next is read from
  the producers only once the server has stored it; producers block on their HWM while NATS is
  slower. The bridge holds at most the message being stored, plus ZeroMQ's ``hwm`` queued
  messages per producer.
- **Nothing accepted is dropped.** If the server fails or the stream is full, the message in
  hand is kept and stored again every ``retry_s`` (producers blocked meanwhile), with one
  warning per outage. A second copy that reached the server anyway is dropped by it
  (``Nats-Msg-Id``).
- **End of stream.** A producer's end message is acknowledged once stored. When every producer
  has ended, or those that have not said nothing for ``producer_timeout_s``, the verdict on
  everything stored is written to the stream, and again whenever it changes.
- **Admission.** Given the stream's ``admission`` key, the bridge stores only producer messages sealed
  with it (:class:`~beamstream.buffer.base.Buffer`); others are refused and never reach NATS. Consumers
  read from the NATS server, not from the bridge: who may read is the server's own accounts and
  permissions (docs/nats-backend.md); the payloads they read stay sealed with the stream key.
- **Restart.** A new bridge on the same stream first reads what is stored (headers only) so
  that its verdict covers the messages stored before it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import zmq
from prometheus_client.core import Metric

from beamstream.buffer.base import Buffer, Received
from beamstream.buffer.metrics import nats_metrics
from beamstream.errors import TransportError
from beamstream.jetstream.store import NatsStore
from beamstream.jetstream.urls import split_url
from beamstream.transport import DEFAULT_MAX_MESSAGE
from beamstream.wire import DataMessage

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
        self.server, self.name = split_url(url)
        self.store_options: dict[str, Any] = {"timeout": timeout, "max_age_s": retention_s, "max_bytes": max_bytes}
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
        self.verdict_for: tuple[int, int] | None = None  # (messages, ended producers) the stored verdict covers

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
        identity, frames, message = self.pending
        try:
            if self.store is None:
                self.store = NatsStore(self.server, self.name, **self.store_options)
            self.store.append(frames, message)
        except TransportError as exc:
            if self.outage is None:
                logger.warning("could not store in NATS (retrying every %g s, producers wait): %s", self.retry_s, exc)
            self.outage = str(exc)
            self._drop_store()
            return False
        if self.outage is not None:
            logger.warning("NATS stores again after: %s", self.outage)
            self.outage = None
        self.pending = None
        self.acknowledge(identity, message)
        return True

    def _drop_store(self) -> None:
        """Close the store after a failure; the next attempt connects afresh."""
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

    def _write_verdict(self) -> None:
        """Write the verdict once the producers are done (all ended, or silent too long), and again
        whenever a message arrives after that (it is computed only then, not on every idle poll)."""
        state = (self.report.messages, len(self.report.ended))
        if self.store is None or state == self.verdict_for or not self.producers_done():
            return
        verdict = self.report.final_verdict()
        try:
            self.store.write_verdict(verdict)
        except TransportError as exc:
            logger.warning("could not store the verdict in NATS (will retry): %s", exc)
            return
        self.verdict_for = state
        logger.info("verdict stored: %s", verdict.summary.splitlines()[0])
