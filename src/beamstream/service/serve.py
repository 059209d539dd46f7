"""``beamstream service``: serve the request service with uvicorn until SIGTERM or Ctrl-C.

The listening socket is bound before the application is made, so that the URL its jobs call back to is known
(port 0 included) when the application's lifespan starts its dispatcher: nothing is patched into uvicorn. The
process reuses freed message-sized memory instead of mapping fresh pages for each message relayed
(:func:`~beamstream.allocator.release_freed_buffers`, as ``beamstream buffer`` does): that halved the
service's CPU time per relayed 2 MiB message (benchmarks/request_latency.py).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from rich.text import Text

from beamstream.display import console, fail, labelled
from beamstream.service.settings import ServiceSettings

logger = logging.getLogger("beamstream.service")


def serve(settings: ServiceSettings) -> None:
    """Serve ``settings``' service until stopped; exits (:func:`~beamstream.display.fail`) with one line saying
    what to fix for a store, key or TLS file that cannot be used, or an address that cannot be bound."""
    import uvicorn
    from sqlalchemy import make_url

    from beamstream.allocator import release_freed_buffers
    from beamstream.service.app import create_app
    from beamstream.service.at_rest import ServiceKeyError
    from beamstream.service.policy import PolicyError
    from beamstream.service.relay import MAX_CLIENT_MESSAGE
    from beamstream.service.store import StoreError

    tls_options = _tls_options(settings)
    listening = _bind(settings.host, settings.port)
    host, port = listening.getsockname()[:2]
    url = f"{'https' if settings.tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"
    public = settings.public_url or url  # where jobs call back
    if settings.tls and (why := _not_named(settings, public)) is not None:
        listening.close()
        fail(f"cannot serve HTTPS: {why}", code=2)
    reached = f"; jobs call back to {public}" if public != url else ""
    store = make_url(settings.database_url).render_as_string(hide_password=True)
    started = Text(f"service: {url} (API /v1, docs /docs{reached}), store {store}")
    try:
        application = create_app(settings, service_url=public,
                                 on_started=lambda: console.print(started, highlight=False))
    except (StoreError, ServiceKeyError, PolicyError) as exc:
        listening.close()
        fail(str(exc))
    release_freed_buffers()
    server = uvicorn.Server(uvicorn.Config(application, log_level="warning", ws_max_size=MAX_CLIENT_MESSAGE,
                                           ws_per_message_deflate=False, **tls_options))
    server.run(sockets=[listening])  # its lifespan runs the dispatcher meanwhile


def _bind(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (IPv6 if ``host`` is an IPv6 address), for uvicorn to serve."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror}; choose another host or port (--host, --port)")
    listening.listen(2048)  # connections made before uvicorn serves wait here
    return listening


def _not_named(settings: ServiceSettings, public: str) -> str | None:
    """Why clients reaching the service at ``public`` (public_url, or the URL it is bound at) would refuse its
    tls_cert: its subject alternative names do not name that URL's host; None if they do."""
    from urllib.parse import urlsplit

    from beamstream.service.tls import certificate_names, names_host

    host = urlsplit(public).hostname or ""
    names = certificate_names(settings.tls_cert)
    if names_host(names, host):
        return None
    return (f"tls_cert {settings.tls_cert} names {', '.join(names) or 'no host'} (its subject alternative names), "
            f"not {host}, the host jobs and users reach the service at ({public}"
            f"{', public_url' if settings.public_url else ''}): they would refuse it; issue one that names it "
            f"(`beamstream ca issue DIR --service {host}`) or set public_url to a URL with a name it has")


def _tls_options(settings: ServiceSettings) -> dict[str, Any]:
    """The uvicorn options that serve ``settings``' mutual TLS (none without it: then a loud warning if the
    service is bound beyond this machine); exits 2 with one line naming the setting and the file if a TLS file
    cannot be used (missing, unreadable, not PEM, a key that is not its certificate's)."""
    from beamstream.service.tls import ServerTLS, TLSFileError, client_certificate_usable, uvicorn_options
    from beamstream.transport import loopback

    if not settings.tls:
        if not loopback(settings.host):
            warning = (f"the service listens on {settings.host} WITHOUT TLS: anyone who reaches it acts as "
                       f"{settings.default_owner!r}; set tls_cert, tls_key, tls_ca and tls_crl (docs/security.md)")
            logger.warning(warning)
            console.print(labelled("WARNING:", "bold red", warning), highlight=False)
        return {}
    try:
        tls = ServerTLS(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_crl,
                        client_cert=settings.tls_client_cert)
    except TLSFileError as exc:
        fail(f"cannot serve HTTPS: {exc}", code=2)
    jobs_cert, jobs_key = settings.jobs_certificate
    names = ("tls_jobs_cert", "tls_jobs_key") if settings.tls_jobs_cert is not None else ("tls_cert", "tls_key")
    if (why := client_certificate_usable((names[0], jobs_cert), (names[1], jobs_key))) is not None:
        fail(f"the service's jobs cannot call it back: {why}; give them a client certificate from the CA "
             "(`beamstream ca issue DIR --user beamstream-jobs`) as tls_jobs_cert and tls_jobs_key", code=2)
    if settings.tls_crl is None:
        console.print(labelled("warning:", "bold yellow", "tls_crl is not set: revoked certificates are accepted "
                               "until they expire"), highlight=False)
    return uvicorn_options(tls)
