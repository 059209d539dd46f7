"""Serve a beamstream stream as a Karabo bridge: each event a train, for ``karabo_bridge.Client`` (docs/karabo-bridge.md).

A Karabo bridge client (European XFEL's ``karabo_bridge.Client(endpoint, sock="REQ")``, and the tools built on
it) sends ``next`` and gets one train: a multipart message of the bridge's protocol 2.2. For each source, in
order of name: a msgpack header (``source``, ``content: msgpack``, the train's ``metadata``) and a msgpack map
of the source's scalar values; then for each of its arrays a msgpack header (``source``, ``content: array``,
``path``: the key, ``dtype``, ``shape``) and the array's bytes in a frame of their own, sent without a copy
(ZeroMQ zero-copy: the frame is a view of the beamstream message the Client received, kept alive until ZeroMQ
has sent it; frames under pyzmq's copy threshold, 64 KiB, are copied, which is cheaper for them). Over ``shm://`` the
Client must read copies (``copy=True``, :func:`beamstream.transport.copies_if_shared`, as ``beamstream bridge karabo``
does): a train may still be leaving when the next event is read, and that read gives the train's slot back to its
producer, which may write the slot again at once.

An event becomes a train (:class:`TrainEncoder`):

    train id   the event's seq ("timestamp.tid" in every source's metadata)
    timestamp  the event's time: "timestamp" (s since the epoch), "timestamp.sec" and "timestamp.frac"
               (attoseconds, to the nanosecond); left out for a stream without times (NaN)
    source     per field, the detector the stream's metadata names for it (``fields[NAME].detector``),
               else DEFAULT_SOURCE; or, given one, that source for every field
    key        the field's name; an array with one value per event (0-d) goes in its source's msgpack map
               as a Python number, any other as an array frame, bitwise as the stream carries it

Serving (:class:`KaraboBridge`): each event read goes once, in the order read, to the next request. The
bridge binds a ROUTER, which REQ clients cannot tell from the REP socket of Karabo's own bridge, with
ZMQ_ROUTER_MANDATORY: a request whose client has gone (stopped while it waited) or does not read is passed
over and its train goes to the next request, never to nobody. Several clients share the trains, each train
going to one of them. REQ has no acknowledgement: a train being transferred when its client dies is lost to
that client, as with Karabo's own bridge. Ctrl-C while a train is handed to ZeroMQ takes effect once it is
handed over and counted (:func:`interrupts_deferred`), so the count printed is what was sent.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import zmq

from beamstream.errors import StreamTimeout, TransportError
from beamstream.logs import WarnOnce
from beamstream.transport import bound_address, open_socket

if TYPE_CHECKING:
    from beamstream.client import Client, Event
    from beamstream.wire.metadata import RunMetadata

logger = logging.getLogger(__name__)

PROTOCOL = "2.2"
REQUEST = b"next"
DEFAULT_SOURCE = "beamstream"
"""The source of the fields the stream's metadata names no detector for."""
MAX_REQUEST = 4096
"""The largest request frame taken (a request is ``next``): ZeroMQ disconnects a peer that sends a larger one."""
QUEUED = 4
"""Replies queued for one client (a REQ client waits for each); past that its request is passed over."""
WAKE_S = 0.1
"""While waiting for a request, how often the bridge lets Python act on a signal: a SIGINT that the kernel gives to
another thread (a library's worker) would not interrupt a wait in ZeroMQ, so Ctrl-C would go unanswered."""
LINGER_S = 10.0
"""Once the stream has ended, how long the last trains sent may take to leave before the socket closes."""


def train_metadata(seq: int, when: float) -> dict[str, Any]:
    """A train's metadata (what every source's header carries besides its name): the train id ``seq`` and,
    unless ``when`` (s since the epoch) is NaN, the timestamp in Karabo's three forms."""
    metadata: dict[str, Any] = {"timestamp.tid": seq}
    if not math.isnan(when):
        seconds, fraction = f"{when:.9f}".split(".")
        metadata.update({"timestamp": when, "timestamp.sec": seconds, "timestamp.frac": fraction.ljust(18, "0")})
    return metadata


class TrainEncoder:
    """The frames of each event's train, named as the module's docstring says.

    ``metadata`` gives the stream's description, asked once per field name when that field is first seen (a
    Client knows it by the time it yields the first event); ``source``, if given, is the source of every field.
    """

    def __init__(self, metadata: Callable[[], RunMetadata | None], source: str | None = None) -> None:
        self.metadata = metadata
        self.source = source
        self.sources: dict[str, str] = {}
        self.pack = msgpack.Packer(use_bin_type=True).pack

    def source_of(self, field: str) -> str:
        """The Karabo source of ``field``."""
        if field not in self.sources:
            described = self.metadata()
            entry = described.fields.get(field) if described is not None else None
            self.sources[field] = self.source or (entry.detector if entry is not None and entry.detector
                                                  else DEFAULT_SOURCE)
        return self.sources[field]

    def frames(self, event: Event) -> list[Any]:
        """The train of ``event``: msgpack frames (bytes) and its arrays (C-contiguous, not copied if they were)."""
        by_source: dict[str, list[tuple[str, np.ndarray]]] = {}
        for field, array in event.data.items():
            by_source.setdefault(self.source_of(field), []).append((field, array))
        metadata = train_metadata(event.seq, event.time)
        frames: list[Any] = []
        for source in sorted(by_source):
            fields = by_source[source]
            scalars = {key: array.item() for key, array in fields if array.ndim == 0}
            frames += [self.pack({"source": source, "content": "msgpack", "metadata": {"source": source, **metadata}}),
                       self.pack(scalars)]
            for key, array in fields:
                if array.ndim:
                    frames += [self.pack({"source": source, "content": "array", "path": key,
                                          "dtype": str(array.dtype), "shape": array.shape}),
                               np.ascontiguousarray(array)]
        return frames


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the block whole: a SIGINT (Ctrl-C) within it takes effect as it ends (KeyboardInterrupt, or the handler
    that was in place), not in its middle. Off the main thread, where no signal handler runs, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append((number, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(*received[0])


@dataclass(slots=True)
class Served:
    """What a bridge has served: trains, their array bytes, and requests passed over (their client gone or
    not reading when the train was ready: the train went to the next request)."""

    trains: int = 0
    bytes: int = 0
    passed_over: int = 0

    def summary(self, address: str) -> str:
        passed = f"; {self.passed_over:,} requests passed over (client gone or not reading)" if self.passed_over else ""
        return (f"served {self.trains:,} train{'s' * (self.trains != 1)}, {self.bytes / 1e9:.3f} GB, to Karabo bridge "
                f"clients at {address}{passed}")


class KaraboBridge:
    """A Karabo bridge server bound at ``bind`` (e.g. ``tcp://*:4545``; port 0: any free one, see
    :attr:`address`); :meth:`serve` answers its clients' requests with a beamstream Client's events,
    :meth:`serve_event` with one event at a time (the ``karabo`` sink's producers).

    ``wait_s``: how long a train waits for a request before :meth:`serve_event` gives up (StreamTimeout); None
    (default): as long as it takes. TransportError if it cannot bind. Use it as a context manager: on leaving,
    trains already sent get up to :data:`LINGER_S` to leave (none after a KeyboardInterrupt), then the socket closes.
    """

    def __init__(self, bind: str, *, source: str | None = None, wait_s: float | None = None) -> None:
        self.context = zmq.Context()
        try:
            self.socket = open_socket(self.context, zmq.ROUTER, bind, bind=True, hwm=QUEUED, max_message=MAX_REQUEST)
        except TransportError:
            self.context.term()
            raise
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.address = bound_address(self.socket)
        self.source = source
        self.wait_s = wait_s
        self.served = Served()
        self.warn_once = WarnOnce(logger)

    def __enter__(self) -> KaraboBridge:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        self.close(0.0 if kind is not None and issubclass(kind, KeyboardInterrupt) else LINGER_S)

    def close(self, linger_s: float = LINGER_S) -> None:
        """Give the trains sent up to ``linger_s`` seconds to leave, then release the socket; safe to call twice."""
        if not self.socket.closed:
            self.socket.close(linger=int(linger_s * 1000))
            self.context.term()

    def serve(self, client: Client) -> Served:
        """Serve every event of ``client``'s stream, each once and in the order read, one per request, until the
        stream ends; what reading raises (StreamIncomplete, StreamTimeout, KeyboardInterrupt) propagates, with
        :attr:`served` counting what was served. An event is served (handed to ZeroMQ) before the next one is read:
        a lossless group's message is acknowledged only once its every event has gone to a client. The next event
        is read and encoded while the client receives the train, before it asks again; over ``shm://`` ``client``
        must therefore read copies (module docstring)."""
        encoder = TrainEncoder(lambda: client.metadata, self.source)
        for event in client.events():
            self.serve_event(event, encoder)
        return self.served

    def serve_event(self, event: Event, encoder: TrainEncoder) -> None:
        """Send ``event``'s train (``encoder``'s frames) to the next client that asks for one and is still there
        to take it; StreamTimeout if none asks within ``wait_s``. Its arrays must stay unchanged until ZeroMQ
        has sent them (they are sent without a copy)."""
        frames = encoder.frames(event)
        while True:
            route = self._request()
            with interrupts_deferred():  # a train sent is a train counted, Ctrl-C or not
                if self._answer(route, frames):
                    self.served.trains += 1
                    self.served.bytes += sum(array.nbytes for array in event.data.values())
                    return
                self.served.passed_over += 1

    def _request(self) -> list[bytes]:
        """The route back to the next client asking for a train: its identity and, from a REQ client, the empty
        delimiter. Any other request is answered with an error text (as Karabo's bridge does), logged once.
        StreamTimeout if none comes within ``wait_s``."""
        deadline = None if self.wait_s is None else time.monotonic() + self.wait_s
        while True:
            while not self.socket.poll(int(WAKE_S * 1000)):  # Python runs a signal handler between polls: Ctrl-C
                if deadline is not None and time.monotonic() > deadline:  # ends the wait
                    raise StreamTimeout(f"no Karabo bridge client asked for a train at {self.address} within "
                                        f"{self.wait_s:g} s: start one (karabo_bridge.Client(..., sock='REQ'))")
            frames = self.socket.recv_multipart()
            split = frames.index(b"", 1) + 1 if b"" in frames[1:] else 1
            route, body = frames[:split], frames[split:]
            if body == [REQUEST]:
                return route
            reason = f"a Karabo bridge request is {REQUEST!r}, not {b''.join(body)[:64]!r}"
            self.warn_once(reason, "answered a request with an error: %s", reason)
            self._answer(route, [f"Error: {reason}".encode()])

    def _answer(self, route: list[bytes], frames: list[Any]) -> bool:
        """Send ``frames`` along ``route``; False (nothing sent) if that client has gone or does not read."""
        try:
            self.socket.send_multipart([*route, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise TransportError(f"the Karabo bridge at {self.address} cannot send: {exc.strerror}") from None
            logger.info("a Karabo bridge client at %s left or stopped reading before its train was sent; the "
                        "train goes to the next request", self.address)
            return False
        return True
