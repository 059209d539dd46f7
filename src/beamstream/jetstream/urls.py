"""``nats://HOST:PORT/NAME`` URLs of beamstream streams kept in NATS JetStream (no nats-py needed)."""

from __future__ import annotations

import socket
import urllib.parse

from beamstream.wire.nats import check_name


def split_url(url: str) -> tuple[str, str]:
    """(server URL, stream name) of ``nats://HOST:PORT/NAME``; ValueError saying what to write otherwise."""
    parts = urllib.parse.urlsplit(url)
    name = parts.path.strip("/")
    if parts.scheme != "nats" or not parts.netloc or not name:
        raise ValueError(f"{url!r}: name the NATS server and the stream, e.g. nats://127.0.0.1:4222/run42")
    return f"nats://{parts.netloc}", check_name("stream name", name)


def listening(server: str, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections at the host and port of ``server`` (``nats://HOST:PORT``)."""
    parts = urllib.parse.urlsplit(server)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=timeout):
            return True
    except OSError:
        return False
