"""Callbacks from a stream's jobs to the service, signed with the stream's secret (through httpx, tried again with
:func:`~beamstream.retrying.retrying`: jobs need nothing beyond beamstream's own dependencies).

A job (the buffer) POSTs a JSON body to ``/v1/streams/{id}/callback`` with two headers:
``Beamstream-Timestamp`` (Unix seconds) and ``Beamstream-Signature``, the hex HMAC-SHA256 of
``TIMESTAMP.BODY`` under the stream's secret. The service refuses a callback that is unsigned,
wrongly signed, more than :data:`MAX_SKEW_S` from its own clock, or seen before (a replay).

The job learns where to call and the secret from a file the service writes for it, private to
its owner (``{"url": ..., "secret": ...}``, and with mutual TLS ``"tls": {"ca", "cert", "key"}``: the
files that verify the service and the client certificate to present), never from its command line or
environment. The job
reads the file again at every attempt: a service restarted at another address rewrites the files
of its streams still starting or running, so a callback being retried reaches the new service.
The buffer job also writes its verdict to :data:`VERDICT_FILE` beside the callback file before it
calls back with it: a service that finds the job ended without that callback (it raced the job's
end, or the service was down for longer than the job retried) ends the stream from the file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from beamstream.retrying import retrying

logger = logging.getLogger(__name__)
TIMESTAMP = "Beamstream-Timestamp"
SIGNATURE = "Beamstream-Signature"
MAX_SKEW_S = 300.0
REMEMBERED = 100_000  # signatures kept to refuse replays (older ones are outside MAX_SKEW_S anyway)
VERDICT_FILE = "verdict.json"  # beside the callback file: a buffer job's verdict, written before it calls back


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``TIMESTAMP.BODY`` under ``secret``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class CallbackRefused(ValueError):
    """A callback that is not signed, signed wrongly, too old or too new, or a replay."""


class Verifier:
    """Checks callbacks' signatures and remembers the ones it accepted, to refuse them if they come again."""

    def __init__(self) -> None:
        self.seen: OrderedDict[str, float] = OrderedDict()

    def check(self, secret: str, timestamp: str | None, given: str | None, body: bytes) -> None:
        """CallbackRefused saying why, unless the callback is signed with ``secret``, fresh and new."""
        if not timestamp or not given:
            raise CallbackRefused(f"unsigned: {TIMESTAMP} and {SIGNATURE} headers are required")
        try:
            sent = float(timestamp)
        except ValueError:
            raise CallbackRefused(f"{TIMESTAMP} is not a number") from None
        if not hmac.compare_digest(signature(secret, timestamp, body), given):
            raise CallbackRefused("wrong signature")
        now = time.time()
        if abs(now - sent) > MAX_SKEW_S:
            raise CallbackRefused(f"timestamp {sent:.0f} is more than {MAX_SKEW_S:.0f} s from the service's clock")
        if given in self.seen:
            raise CallbackRefused("replayed: this callback was received before")
        self.seen[given] = sent
        while len(self.seen) > REMEMBERED or (self.seen and next(iter(self.seen.values())) < now - 2 * MAX_SKEW_S):
            self.seen.popitem(last=False)


def write_callback_file(path: Path, url: str, secret: str, tls: dict[str, str] | None = None) -> None:
    """Write the file a job reads to call back, whole or not at all (a job may be reading it): private to its
    owner. With a service on HTTPS (mutual TLS), ``tls`` says how the job connects: ``ca`` (the CA certificate
    that verifies the service), ``cert`` and ``key`` (the client certificate the job presents)."""
    from beamstream.atomic import write_atomically

    target: dict[str, Any] = {"url": url, "secret": secret}
    if tls is not None:
        target["tls"] = tls
    write_atomically(path, json.dumps(target).encode())


def advertised(endpoints: dict[str, str | None], host: str | None) -> dict[str, str | None]:
    """The endpoints a buffer job reported listening at (``producers`` and ``consumers``, ``tcp://HOST:PORT``;
    ``metrics``, ``http://HOST:PORT``) with each one's host replaced by ``host`` (the setting ``data_advertise``:
    the buffer's host as others reach it); unchanged without ``host``, and those of other schemes (``ipc://``,
    ``nats://``) always."""
    from urllib.parse import urlsplit

    if host is None:
        return dict(endpoints)
    name = f"[{host}]" if ":" in host else host
    changed: dict[str, str | None] = {}
    for role, endpoint in endpoints.items():
        parts = urlsplit(endpoint) if endpoint else None
        if parts is not None and parts.scheme in ("tcp", "http", "https") and parts.port is not None:
            endpoint = parts._replace(netloc=f"{name}:{parts.port}").geturl()
        changed[role] = endpoint
    return changed


def _tls_context(target: dict[str, Any]) -> ssl.SSLContext | None:
    """The SSL context for calling back the service of callback file contents ``target`` (None: plain HTTP): the
    one client context (:func:`~beamstream.security.tls_context.client_tls_context`). TLS files that cannot be
    used raise an ``ssl.SSLError`` (an OSError, as a connection that fails does) naming the file."""
    from beamstream.errors import OptionError
    from beamstream.security.tls_context import client_tls_context

    tls = target.get("tls")
    if not tls:
        return None
    try:
        return client_tls_context((tls["cert"], tls["key"], tls["ca"]))
    except OptionError as exc:
        raise ssl.SSLError(str(exc)) from None


def service_answers(path: Path) -> bool:
    """Whether the service named in the callback file ``path`` answers its health check now (within 10 s)."""
    try:
        target = json.loads(path.read_text())
        health = target["url"].split("/v1/streams/")[0] + "/healthz"
        return httpx.get(health, timeout=10, verify=_tls_context(target) or True).status_code == 200
    except (httpx.HTTPError, OSError, ValueError, KeyError):
        return False


def end_when_orphaned(buffer: Any, path: Path, after_s: float, orphaned: threading.Event) -> None:
    """Watch ``buffer`` (run for the service named in the callback file ``path``) on a thread and stop it once, for
    ``after_s`` seconds, no message moved, no reader was attached and the service did not answer: nobody can use it
    any more (its stream ended long ago, or its service is gone for good). Stopped so, it ends as on SIGTERM,
    its verdict left beside the callback file, and ``orphaned`` is set."""
    def watch() -> None:
        last_moved, used, answered = None, time.monotonic(), time.monotonic()
        while not buffer.wait_stopping(min(after_s / 4, 5.0)):
            moved, readers = buffer.activity()
            now = time.monotonic()
            if moved != last_moved or readers:
                last_moved, used = moved, now
            elif now - used >= after_s and service_answers(path):
                answered = now
            if now - max(used, answered) >= after_s:
                logger.warning("ending: for %g s nobody used this buffer and its service did not answer", after_s)
                orphaned.set()
                buffer.stop()

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def call_back(path: Path, event: dict[str, Any], retry_for_s: float = 60.0,
              give_up: Callable[[], bool] = lambda: False) -> bool:
    """POST ``event`` (JSON) to the service named in the callback file ``path``, signed; retried (the service may be
    restarting) for up to ``retry_for_s`` seconds, or until ``give_up()`` says to stop. The file is read at every
    attempt, so a retry goes where a restarted service has pointed it. True if the service took it; failures are
    logged, not raised."""
    body = json.dumps(event).encode()
    url = "the service"
    try:
        for attempt in retrying((httpx.TransportError, OSError), for_s=retry_for_s, give_up=give_up):
            with attempt:
                target = json.loads(path.read_text())
                url, timestamp = target["url"], f"{time.time():.3f}"
                answer = httpx.post(url, content=body, timeout=10, verify=_tls_context(target) or True, headers={
                    "Content-Type": "application/json", TIMESTAMP: timestamp,
                    SIGNATURE: signature(target["secret"], timestamp, body)})
    except (httpx.TransportError, OSError) as exc:  # it did not answer, for as long as we tried
        logger.warning("could not call the service back (%s): %s; the service's public_url setting must be its URL "
                       "as this job's host (%s) reaches it", url, exc, socket.gethostname())
        return False
    if answer.is_success:
        return True
    # the service answered: it will not take it
    logger.warning("the service refused callback %s: %s %s", event.get("event"), answer.status_code,
                   answer.content[:200])
    return False
