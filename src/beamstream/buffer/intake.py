"""``ProducerIntake``: what every buffer backend does on its producer side, and running its loop.

Producers (the ``stream`` sink, push pattern) connect their DEALER to the producer ROUTER that
a buffer binds. Every backend reads their messages the same way: a message that is not a
beamstream message of this wire version is refused with a ``beamstream-refused:`` reply that
says why (and counted); a data message is acknowledged (``beamstream-kept INDEX``) and an end
message with ``beamstream-ack`` once the backend has kept it; a message that arrives again (a
producer resending after a reconnect) is acknowledged again and otherwise dropped; producers
that have begun a stream and then say nothing for ``producer_timeout_s`` without ending are
declared gone, so the stream's verdict can be given without them.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod

import zmq

from beamstream.accounting import StreamReport
from beamstream.errors import WireFormatError
from beamstream.transport import open_socket
from beamstream.wire import DataMessage, EndMessage, parse_message
from beamstream.wire.replies import ACK, kept, refused

log = logging.getLogger(__name__)


class ProducerIntake(ABC):
    """The producer socket, the account of the stream (``report``) and the counters of one buffer.

    Subclasses run their loop in :meth:`serve` until ``stop`` is set, and release what they
    hold in :meth:`_release`; :meth:`start` runs the loop on a thread, :meth:`close` stops it.
    """

    thread_name = "beamstream-buffer"

    def __init__(self, context: zmq.Context, producers: str, *, hwm: int, bind: bool, producer_timeout_s: float,
                 affinity: int = 0) -> None:
        self.context = context
        self.producers = open_socket(context, zmq.ROUTER, producers, bind=bind, hwm=hwm, affinity=affinity,
                                     replies="out")
        self.report = StreamReport(endpoints=[producers])
        self.seen: set[tuple[int, int]] = set()  # (rank, index) of every data message kept
        self.counters = {"messages_in": 0, "bytes_in": 0, "rejected": 0, "duplicates": 0}
        self.producer_timeout_s = producer_timeout_s
        self.last_producer_message = time.monotonic()
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def serve(self) -> None:
        """Run the loop until ``stop`` is set."""

    @abstractmethod
    def _release(self) -> None:
        """Close what the backend holds, after the loop has stopped."""

    def start(self) -> ProducerIntake:
        """Serve on a background thread; :meth:`close` stops it."""
        self._thread = threading.Thread(target=self.serve, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the sockets; safe to call once, after or without :meth:`start`."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join()
        self._release()
        self.producers.close(linger=0)
        self.context.term()

    def receive(self, frames: list[zmq.Frame]) -> tuple[bytes, list[zmq.Frame], DataMessage | EndMessage] | None:
        """(producer identity, message frames, parsed header) of what a producer sent; None if refused or already kept."""
        identity = frames[0].bytes
        self.last_producer_message = time.monotonic()
        try:
            message = parse_message(frames[1:], verify=False)
        except WireFormatError as exc:
            self.counters["rejected"] += 1
            log.warning("refused a message from a producer: %s", exc)
            self.producers.send_multipart([identity, refused(str(exc))])
            return None
        if isinstance(message, DataMessage) and (message.rank, message.index) in self.seen:
            self.counters["duplicates"] += 1
            self.producers.send_multipart([identity, kept(message.index)])
            return None
        return identity, frames[1:], message

    def acknowledge(self, identity: bytes, message: DataMessage | EndMessage) -> None:
        """Account for a message the backend has kept, and tell its producer so."""
        self.account(message)
        if isinstance(message, EndMessage):
            self.producers.send_multipart([identity, ACK])
            return
        self.counters["messages_in"] += 1
        self.counters["bytes_in"] += message.nbytes
        self.producers.send_multipart([identity, kept(message.index)])

    def account(self, message: DataMessage | EndMessage) -> None:
        """Add a kept message to the stream's account (also for messages kept before a restart)."""
        if isinstance(message, EndMessage):
            self.report.add_end(message)
        else:
            self.report.add_data(message)
            self.seen.add((message.rank, message.index))

    def producers_done(self) -> bool:
        """True once every producer has ended, or those that began a stream without ending have been
        silent for ``producer_timeout_s``: the stream's verdict can be given."""
        if self.report.producers is None:
            return False
        silent = time.monotonic() - self.last_producer_message > self.producer_timeout_s
        return self.report.all_ended or silent
