"""A bound on the connections a buffer's listening socket keeps, so that no one can take all its descriptors.

ZeroMQ accepts every connection that reaches a bound socket and has no option to cap them.
:class:`ConnectionLimit` watches the socket's monitor on a thread of its own: a connection
accepted while ``limit`` are already open is shut down at once (ZeroMQ then closes it and
frees its descriptor), logged once and counted. A connection that never completes the
ZeroMQ handshake is closed by ZeroMQ itself after its handshake interval (30 s by default).

Should descriptors still run out (a flood faster than the watcher, or a low ``ulimit -n``),
ZeroMQ fails the accept, which the watcher counts and logs once; the buffer goes on serving
the connections it has. :func:`connection_budget` keeps the limits of a buffer's sockets,
together, under its process's open-file limit so that this is the exception.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading

import zmq
from zmq.utils.monitor import recv_monitor_message

from beamstream.logs import WarnOnce

logger = logging.getLogger(__name__)
RESERVED_DESCRIPTORS = 128  # files, spill segments, the metrics server, ZeroMQ's own mailboxes
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED


def connection_budget(requested: int, sockets: int) -> int:
    """Connections each of ``sockets`` listening sockets may keep: ``requested``, or fewer when this
    process's open-file limit cannot hold that many (then a warning says how to raise it)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    budget = max(1, (soft - RESERVED_DESCRIPTORS) // sockets)
    if budget < requested:
        logger.warning("the open-file limit (%d) leaves room for %d connections per socket, not %d; "
                       "raise it (ulimit -n) to allow more", soft, budget, requested)
        return budget
    return requested


class ConnectionLimit:
    """Keeps at most ``limit`` connections open on ``listener`` (a bound socket), from construction to :meth:`close`.

    ``open`` is the number of connections open now, ``refused`` those shut down for being over
    the limit, ``failed`` the accepts that failed (descriptors ran out).
    """

    def __init__(self, listener: zmq.Socket, limit: int, side: str) -> None:
        self.limit = limit
        self.side = side
        self.address = _local_address(listener.getsockopt_string(zmq.LAST_ENDPOINT))
        self.open = self.refused = self.failed = 0
        self.warn_once = WarnOnce(logger)
        self._monitor = listener.get_monitor_socket(EVENTS)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"beamstream-{side}-connections", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching (call before the listener closes)."""
        self._stopping.set()
        self._thread.join()

    def _watch(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._monitor.poll(100):
                    event = recv_monitor_message(self._monitor)
                    self._on_event(event["event"], event["value"])
        finally:
            self._monitor.close(linger=0)

    def _on_event(self, kind: int, value: int) -> None:
        if kind == zmq.EVENT_ACCEPTED:
            self.open += 1
            if self.open > self.limit and self._shut_down(value):
                self.refused += 1
                self.warn_once("limit", "refused %s connections beyond %d open at once (max_connections); "
                               "this is logged once", self.side, self.limit)
        elif kind == zmq.EVENT_DISCONNECTED:
            self.open = max(0, self.open - 1)
        elif kind == zmq.EVENT_ACCEPT_FAILED:
            self.failed += 1
            self.warn_once("failed", "could not accept a %s connection: %s; the connections already open are "
                           "served (raise ulimit -n or lower max_connections); this is logged once",
                           self.side, os.strerror(value))

    def _shut_down(self, descriptor: int) -> bool:
        """Shut the accepted connection ``descriptor`` down; False if it is no longer one of this listener's
        (it closed, and its number now names something else)."""
        try:
            connection = socket.socket(fileno=descriptor)
        except OSError:
            return False
        try:
            if _local_address_of(connection) != self.address:
                return False
            connection.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            return False
        finally:
            connection.detach()  # ZeroMQ owns the descriptor and closes it


def _local_address(endpoint: str) -> str | int:
    """What ``getsockname`` of a connection accepted on ``endpoint`` identifies it by: the port, or the ipc path."""
    transport, _, rest = endpoint.partition("://")
    return int(rest.rsplit(":", 1)[1]) if transport == "tcp" else rest


def _local_address_of(connection: socket.socket) -> str | int:
    name = connection.getsockname()
    return name[1] if isinstance(name, tuple) else name
