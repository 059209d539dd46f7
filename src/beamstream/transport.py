"""ZeroMQ sockets for streams: endpoints per rank, bind/connect, errors translated at the edge.

What travels over them is defined in :mod:`beamstream.wire`. An ``shm://PATH`` endpoint is the ipc:// socket
``PATH`` whose data messages carry their payload in shared memory (:mod:`beamstream.wire.slots`,
:mod:`beamstream.shared_memory`): the socket is the same, what its senders and receivers put in it differs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import zmq

from beamstream.errors import TransportError
from beamstream.modes import file_mode

def rank_endpoint(endpoint: str, rank: int) -> str:
    """The endpoint producer ``rank`` binds when every producer binds its own.

    ``tcp://host:PORT`` → ``tcp://host:PORT+rank``; ``ipc://PATH`` → ``ipc://PATH-rank`` (``shm://`` alike)
    (rank 0 keeps the endpoint as written).
    """
    if rank == 0:
        return endpoint
    parts = urlsplit(endpoint)
    if parts.scheme == "tcp":
        return f"tcp://{parts.hostname}:{parts.port + rank}"
    if parts.scheme in ("ipc", "shm"):
        return f"{endpoint}-{rank}"
    raise TransportError(f"{endpoint}: several producers can only bind tcp://, ipc:// or shm:// endpoints")


def shared(endpoint: str) -> bool:
    """True for an ``shm://`` endpoint: payloads in shared memory."""
    return endpoint.startswith("shm://")


def copies_if_shared(endpoint: str) -> dict[str, bool]:
    """The Client options of a reader that keeps a message's arrays after it reads the next message: over
    ``shm://`` such a reader reads copies (``copy=True``), as a message's arrays are views of a slot that goes back
    to its producer, to be written again, once the next message is read; other schemes' messages are the reader's
    own (no option)."""
    return {"copy": True} if shared(endpoint) else {}


def socket_endpoint(endpoint: str) -> str:
    """The ZeroMQ endpoint of ``endpoint``: an ``shm://PATH`` is the ipc:// socket ``PATH``."""
    return "ipc://" + endpoint.removeprefix("shm://") if shared(endpoint) else endpoint


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is a tcp://host:port, ipc://path, shm://path or inproc://name address."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("tcp", "ipc", "shm", "inproc"):
        raise TransportError(f"{endpoint!r}: expected tcp://HOST:PORT, ipc://PATH, shm://PATH or inproc://NAME")
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise TransportError(f"{endpoint!r}: a tcp endpoint needs a host and a port, e.g. tcp://127.0.0.1:5555")
    return endpoint


def spec_endpoint(endpoint: str) -> str:
    """:func:`check_endpoint` for a spec field's validator: its refusal as a ValueError, which pydantic reports."""
    try:
        return check_endpoint(endpoint)
    except TransportError as exc:
        raise ValueError(str(exc)) from None


def loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind, or a name) reaches only this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


REACH_TIMEOUT_S = 3.0
"""An endpoint that does not answer a connection within this many seconds counts as unreachable."""


def unreachable(endpoint: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why this machine cannot reach ``endpoint`` (tcp://, http:// or https://: its name does not resolve here, the
    connection is refused or not answered within ``timeout`` seconds), or None if a TCP connection to it opens (it is
    closed at once: neither ZeroMQ nor an HTTP server minds) or it is no such endpoint."""
    import socket as sockets

    parts = urlsplit(endpoint)
    if parts.scheme not in ("tcp", "http", "https") or parts.port is None:
        return None
    try:
        sockets.create_connection((parts.hostname, parts.port), timeout=timeout).close()
    except sockets.gaierror as exc:
        return f"{parts.hostname} does not resolve here ({exc.strerror})"
    except OSError as exc:
        return "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
    return None


def bound_address(socket: zmq.Socket) -> str:
    """Where peers reach a bound ``socket``: its last endpoint (the port chosen, for port 0), with a wildcard
    host (``0.0.0.0``, ``[::]``) replaced by this machine's name."""
    import socket as sockets

    endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
    parts = urlsplit(endpoint)
    if parts.scheme == "tcp" and parts.hostname in ("0.0.0.0", "::"):
        return f"tcp://{sockets.getfqdn()}:{parts.port}"
    return endpoint


DEFAULT_MAX_MESSAGE = 1 << 30
"""Largest frame a receiving socket accepts unless told otherwise (ZMQ_MAXMSGSIZE)."""


def open_socket(context: zmq.Context, kind: int, endpoint: str, *, bind: bool, hwm: int,
                affinity: int = 0, replies: Literal["in", "out"] | None = None,
                max_message: int | None = None) -> zmq.Socket:
    """A socket of ``kind`` bound or connected to ``endpoint``, with send and receive HWM ``hwm``.

    ``affinity`` (ZMQ_AFFINITY, a bit mask of the context's I/O threads; 0: any) pins the
    socket's connections to those I/O threads. ``replies`` names the direction that carries
    only small replies to the data (``kept``, end acknowledgements): it gets no HWM, because a
    ROUTER silently drops what it cannot queue, and a lost reply would stall a producer.
    ``max_message`` (ZMQ_MAXMSGSIZE) is the largest frame it accepts: ZeroMQ disconnects a peer
    that sends a larger one before allocating it.
    """
    endpoint = socket_endpoint(check_endpoint(endpoint))
    socket = context.socket(kind)
    if max_message is not None:
        socket.setsockopt(zmq.MAXMSGSIZE, max_message)
    socket.setsockopt(zmq.SNDHWM, 0 if replies == "out" else hwm)
    socket.setsockopt(zmq.RCVHWM, 0 if replies == "in" else hwm)
    if affinity:
        socket.setsockopt(zmq.AFFINITY, affinity)
    try:
        if bind:
            socket.bind(endpoint)
            if endpoint.startswith("ipc://"):
                _make_private(Path(endpoint.removeprefix("ipc://")))
        else:
            socket.connect(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        action = "bind" if bind else "connect to"
        hint = " (is another process using it?)" if exc.errno == zmq.EADDRINUSE else ""
        raise TransportError(f"cannot {action} {endpoint}: {exc.strerror}{hint}") from None
    return socket


def _make_private(socket_path: Path) -> None:
    """Let only the owner connect to a bound ipc:// socket (its file mode; connecting needs write)."""
    with contextlib.suppress(OSError):  # an abstract or already removed socket has no file to change
        socket_path.chmod(file_mode() | 0o200)
