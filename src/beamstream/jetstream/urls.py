"""``nats://HOST:PORT[,HOST:PORT…]/NAME[?replicas=N][&streams=N]`` URLs of beamstream streams kept in NATS JetStream (no
nats-py needed)."""

from __future__ import annotations

import socket
import urllib.parse
from typing import NamedTuple

from beamstream.wire.nats import MAX_STREAMS, check_name

MAX_REPLICAS = 5  # JetStream keeps a stream on at most five servers
EXAMPLE = "nats://127.0.0.1:4222/run42, or for a cluster nats://h1:4222,h2:4222,h3:4222/run42?replicas=3"


class StreamUrl(NamedTuple):
    """A parsed stream URL: ``server`` (``nats://HOST:PORT``, or several comma-separated: one cluster, any of
    whose servers will do), the stream's ``name``, and ``replicas``: on how many servers a buffer that creates the
    stream keeps it (None: not given, one)."""

    server: str
    name: str
    replicas: int | None


def split_url(url: str) -> StreamUrl:
    """The server(s), stream name and replicas of ``nats://HOST:PORT[,HOST:PORT…]/NAME[?replicas=N][&streams=N]``
    (``streams``: :func:`spread`); ValueError saying what to write otherwise."""
    parts = urllib.parse.urlsplit(url)
    name = parts.path.strip("/")
    if parts.scheme != "nats" or not parts.netloc or not name:
        raise ValueError(f"{url!r}: name the NATS server and the stream, e.g. {EXAMPLE}")
    hosts = parts.netloc.split(",")
    for host in hosts:
        try:
            address = urllib.parse.urlsplit(f"nats://{host}")
            usable = bool(address.hostname) and (address.port or 0) >= 0  # .port: ValueError if not 0 to 65535
        except ValueError:
            usable = False
        if not usable:
            raise ValueError(f"{url!r}: {host!r} is not HOST:PORT; e.g. {EXAMPLE}")
    return StreamUrl(",".join(f"nats://{host}" for host in hosts), check_name("stream name", name),
                     _replicas(url, parts.query))


def spread(url: str) -> int | None:
    """``streams`` of a stream URL (``?streams=N``: over how many JetStream streams a buffer that creates the stream
    spreads its data messages; None: not given, one); ValueError as :func:`split_url`."""
    split_url(url)
    return _setting(url, urllib.parse.urlsplit(url).query, "streams", MAX_STREAMS)


def _replicas(url: str, query: str) -> int | None:
    """``replicas`` of a URL's query; ValueError naming what is wrong (with any setting but it and ``streams``)."""
    unknown = sorted(set(urllib.parse.parse_qs(query, keep_blank_values=True)) - {"replicas", "streams"})
    if unknown:
        raise ValueError(f"{url!r}: apart from ?streams=N, the only setting a nats:// URL takes is ?replicas=N, not "
                         f"{', '.join(unknown)}")
    _setting(url, query, "streams", MAX_STREAMS)
    return _setting(url, query, "replicas", MAX_REPLICAS)


def _setting(url: str, query: str, key: str, most: int) -> int | None:
    """The whole number ``key`` of a URL's query, from 1 to ``most`` (None: not given); ValueError otherwise."""
    settings = urllib.parse.parse_qs(query, keep_blank_values=True)
    if key not in settings:
        return None
    given = settings[key][-1]
    if not given.isdigit() or not 1 <= int(given) <= most:
        raise ValueError(f"{url!r}: {key} must be a whole number from 1 to {most}, not {given!r}")
    return int(given)


def servers(server: str) -> list[str]:
    """Each ``nats://HOST:PORT`` of a server string from :func:`split_url` (one, or several comma-separated, with
    or without ``nats://`` on the later ones)."""
    first, *others = server.split(",")
    return [first, *(other if "://" in other else f"nats://{other}" for other in others)]


def listening(server: str, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections at the host and port of ``server`` (``nats://HOST:PORT``; of
    several: the first)."""
    parts = urllib.parse.urlsplit(servers(server)[0])
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=timeout):
            return True
    except OSError:
        return False
