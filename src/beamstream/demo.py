"""``beamstream demo``: simulated images from N producer processes to a client in this process.

With ``--service``, the same stream is asked of a request service (started for the demo, then
stopped) and read through the Python API (:class:`~beamstream.remote.Service`); by default with
mutual TLS, on a CA and certificates the demo makes for itself.
"""

from __future__ import annotations

import getpass
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beamstream.accounting import StreamReport
from beamstream.client import Client
from beamstream.errors import ServiceError
from beamstream.producer import RunResult, run_local
from beamstream.spec import parse_spec

SERVICE_START_S = 60.0  # for the demo's service to say where it listens


def demo_spec_data(events: int, shape: tuple[int, int], serializer: str, batch: int) -> dict[str, Any]:
    """A simulated image stream, with no sinks yet."""
    return {
        "name": "demo",
        "source": {"type": "simulated", "n_events": events, "bank_size": 8,
                   "detectors": [{"kind": "image", "shape": list(shape)}]},
        "steps": [{"type": "batch", "size": batch}],
        "serializer": {"type": serializer},
    }


def demo_spec(endpoint: str, events: int, shape: tuple[int, int], serializer: str, batch: int) -> object:
    """A simulated image stream sent to ``endpoint``."""
    return parse_spec({**demo_spec_data(events, shape, serializer, batch),
                       "sinks": [{"type": "stream", "endpoint": endpoint}]}, origin="demo")


def run_demo(workers: int, events: int, shape: tuple[int, int], serializer: str, batch: int) -> str:
    """Stream ``events`` images through ``workers`` producers to one client; return a summary of the rates."""
    with tempfile.TemporaryDirectory(prefix="beamstream-demo-") as folder:
        endpoint = f"ipc://{Path(folder) / 'stream'}"
        spec = demo_spec(endpoint, events, shape, serializer, batch)
        outcome: dict[str, RunResult] = {}
        with Client(endpoint, bind=True, timeout=60.0) as client:
            producers = threading.Thread(target=lambda: outcome.setdefault("run", run_local(spec, workers)))
            producers.start()
            first = None
            for _ in client.messages():
                first = first or time.perf_counter()
            seconds = time.perf_counter() - first
            producers.join()
            report = client.report
    result = outcome["run"]
    if not result.ok:
        return f"producers failed: {result.errors}"
    return f"{report.summary()}\n{_rates(report, seconds, workers, shape, serializer, batch)}"


def run_service_demo(workers: int, events: int, shape: tuple[int, int], serializer: str,
                     batch: int, tls: bool = True) -> tuple[str, bool]:
    """Start a request service (job store and stream folders in a temporary folder, local jobs), ask it for
    ``events`` images from ``workers`` producers, read them through :class:`~beamstream.remote.Service`, stop it.

    With ``tls`` (the default) the service serves HTTPS with mutual TLS, on a CA and certificates made in
    the temporary folder (:func:`demo_credentials`): the stream is requested as the current user, with
    their certificate, and read through the service's relay (wss), so every byte crosses TLS. Without,
    plain HTTP, and the stream is read from its buffer.

    Returns the outcome (the account, the rates, the stream's final state and its reason, how it was
    secured) and whether the stream completed. StreamIncomplete if the events did not all arrive.
    """
    from beamstream.remote import Service
    from beamstream.service.states import State

    with tempfile.TemporaryDirectory(prefix="beamstream-demo-", ignore_cleanup_errors=True) as folder:
        credentials = demo_credentials(Path(folder) / "ca") if tls else None
        client_tls = {} if credentials is None else credentials.client
        with (demo_service(Path(folder), credentials) as url, Service(url, **client_tls) as service):
            stream = service.request(demo_spec_data(events, shape, serializer, batch), resources={"workers": workers})
            first = None
            if credentials is None:
                for _ in stream:
                    first = first or time.perf_counter()
            else:
                stream.wait_until_running()
                with stream.client(relay=True) as client:
                    try:
                        for _ in client.events():
                            first = first or time.perf_counter()
                    finally:
                        stream.report = client.report
            seconds = time.perf_counter() - first
            *_, final = stream.changes()
    rates = _rates(stream.report, seconds, workers, shape, serializer, batch)
    completed = final.state is State.COMPLETED
    verdict = "complete" if (stream.view["verdict"] or {}).get("complete") else "not complete"
    ended = f"{final.state.value}, verdict {verdict}" if completed else f"{final.state.value}: {final.reason}"
    secured = (f"with mutual TLS, as {credentials.user} (owner {stream.view['owner']}), read through the relay; "
               f"certificates from a CA made for the demo" if credentials is not None else "without TLS (plain HTTP)")
    return (f"{stream.report.summary()}\n{rates}\nrequest service at {url}: stream {stream.id} {ended}\n"
            f"ran {secured}"), completed


@dataclass(frozen=True)
class DemoCredentials:
    """The demo's TLS files: the user it runs as, the service's settings, the client's files."""

    user: str
    settings: dict[str, str]  # BEAMSTREAM_SERVICE_TLS_* variables
    client: dict[str, Path]  # Service(cert=, key=, ca=)


def demo_user() -> str:
    """The current user's name, as a certificate's user name allows it (else ``demo``)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    name = re.sub(r"[^A-Za-z0-9._@-]", "-", name).lstrip("._@-")[:64]
    return name or "demo"


def demo_credentials(directory: Path) -> DemoCredentials:
    """A CA in ``directory`` with a service certificate for 127.0.0.1 and localhost, one for the current user
    and one for the service's jobs (``beamstream-jobs``)."""
    from beamstream.security.ca import init_ca, issue

    init_ca(directory, name="beamstream demo CA", days=2)
    served = issue(directory, service=["127.0.0.1", "localhost"], days=1)
    user = demo_user()
    if user == "beamstream-jobs":
        user = "demo"
    own = issue(directory, user=user, days=1)
    jobs = issue(directory, user="beamstream-jobs", days=1)
    ca = directory / "ca.crt"
    files = {"tls_cert": served.certificate, "tls_key": served.key, "tls_ca": ca, "tls_crl": directory / "crl.pem",
             "tls_jobs_cert": jobs.certificate, "tls_jobs_key": jobs.key}
    return DemoCredentials(user, {f"BEAMSTREAM_SERVICE_{name.upper()}": str(path) for name, path in files.items()},
                           {"cert": own.certificate, "key": own.key, "ca": ca})


@contextmanager
def demo_service(folder: Path, credentials: DemoCredentials | None = None) -> Iterator[str]:
    """``beamstream service`` on a free port with its job store and state in ``folder`` and local jobs; its URL.

    With ``credentials``, with their TLS settings (an https:// URL). On leaving, its streams that have not
    ended are cancelled (their jobs would outlive it), then it is stopped (SIGTERM). ServiceError, with its
    output, if it does not listen within SERVICE_START_S.
    """
    from beamstream.remote import Service

    log = folder / "service.log"
    environment = {**os.environ, "BEAMSTREAM_SERVICE_EXECUTOR": "local", "BEAMSTREAM_SERVICE_EXECUTORS": '["local"]',
                   "BEAMSTREAM_SERVICE_DRAIN_GRACE_S": "10", **(credentials.settings if credentials else {})}
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "beamstream.cli", "service", "--host", "127.0.0.1",
                                    "--port", "0", "--database-url", f"sqlite:///{folder / 'service.db'}",
                                    "--state-dir", str(folder / "state")],
                                   stdout=output, stderr=subprocess.STDOUT, env=environment)
    try:
        deadline = time.monotonic() + SERVICE_START_S
        while not (found := re.search(r"service: (https?://\S+)", log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"the demo's service did not start (exit code {process.poll()}):\n"
                                   f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        url = found.group(1)
        try:
            yield url
        finally:
            with Service(url, **(credentials.client if credentials else {})) as service:
                for stream in service.streams():
                    if not stream.state.final:
                        _cancel(stream)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cancel(stream: Any) -> None:
    """Cancel ``stream`` unless it has ended meanwhile (409)."""
    try:
        stream.cancel()
    except ServiceError as exc:
        if exc.status != 409:
            raise


def _rates(report: StreamReport, seconds: float, workers: int, shape: tuple[int, int], serializer: str,
           batch: int) -> str:
    return (f"{report.events:,} events of {shape[0]}×{shape[1]} uint16 ({serializer}, {batch}/message) from "
            f"{workers} workers in {seconds:.2f} s: {report.events / seconds:,.0f} events/s, "
            f"{report.bytes / 1e6 / seconds:,.1f} MB/s")
