"""``beamstream demo``: simulated images from N producer processes to a client in this process.

With ``--service``, the same stream is asked of a request service (started for the demo, then
stopped) and read through the Python API (:class:`~beamstream.service_client.ServiceClient`); by default with
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
from typing import TYPE_CHECKING, Any

from beamstream.accounting import StreamReport
from beamstream.client import Client
from beamstream.display import ConsumerProgress, console
from beamstream.errors import ServiceError
from beamstream.parent_death import terminate_with_parent
from beamstream.producer import RunResult, run_local
from beamstream.worker_signals import sigint_held
from beamstream.spec import parse_spec

if TYPE_CHECKING:
    from beamstream.service.store import JobStore
    from beamstream.viewer.latest import Latest
    from beamstream.viewer.serve import ViewerServer

SERVICE_START_S = 60.0  # for the demo's service to say where it listens
JOBS_END_S = 30.0  # for the demo's service's jobs to end once stopped (its jobrun kills one 30 s after stopping it)


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


def run_demo(workers: int, events: int, shape: tuple[int, int], serializer: str, batch: int,
             latest: Latest | None = None) -> str:
    """Stream ``events`` images through ``workers`` producers to one client, showing its progress (and offering
    each message to ``latest``, a viewer's); return a summary of the rates. On Ctrl-C (KeyboardInterrupt, raised
    again) the producers are stopped: none outlives this call."""
    with tempfile.TemporaryDirectory(prefix="beamstream-demo-") as folder:
        endpoint = f"ipc://{Path(folder) / 'stream'}"
        spec = demo_spec(endpoint, events, shape, serializer, batch)
        with Client(endpoint, bind=True, timeout=60.0) as client, _producers(spec, workers) as outcome:
            seconds = _read(client, latest)
        report = client.report
    result = outcome["run"]
    if not result.ok:
        return f"producers failed: {result.errors}"
    return f"{report.summary()}\n{_rates(report, seconds, workers, shape, serializer, batch)}"


@contextmanager
def _producers(spec: Any, workers: int) -> Iterator[dict[str, RunResult]]:
    """``spec``'s producers (:func:`~beamstream.producer.run_local`) on a thread while the block runs; the
    ``"run"`` of what it yields is their RunResult once the block is left. Leaving the block waits for them; leaving
    it with an exception (Ctrl-C, or the client gave up: nothing reads any more) stops them first, so none outlives
    it. The thread blocks SIGINT (and so do the workers while they start): Ctrl-C lands in the main thread."""
    stop = threading.Event()
    outcome: dict[str, RunResult] = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("run", run_local(spec, workers, stop=stop,
                                                                                 poll_interval=0.1)),
                              name="beamstream-demo-producers")
    try:
        with sigint_held():  # the thread keeps the mask it starts with; a Ctrl-C meanwhile is raised after
            thread.start()
        yield outcome
    except BaseException:
        stop.set()
        raise
    finally:
        thread.join()


def _read(client: Client, latest: Latest | None = None) -> float:
    """Read ``client``'s stream to its end, showing its progress and offering each message to ``latest`` (a viewer's)
    if given; the seconds from its first message to its end."""
    first = None
    with ConsumerProgress() as progress:
        for _ in (client.messages() if latest is None else latest.passing(client)):
            first = first or time.perf_counter()
            progress.update(client.report)
    return time.perf_counter() - first


def run_service_demo(workers: int, events: int, shape: tuple[int, int], serializer: str,
                     batch: int, tls: bool = True, latest: Latest | None = None) -> tuple[str, bool]:
    """Start a request service (job store and stream folders in a temporary folder, local jobs), ask it for
    ``events`` images from ``workers`` producers, read them through
    :class:`~beamstream.service_client.ServiceClient`, stop it.

    With ``tls`` (the default) the service serves HTTPS with mutual TLS, on a CA and certificates made in
    the temporary folder (:func:`demo_credentials`): the stream is requested as the current user, with
    their certificate, and read through the service's relay (wss), so every byte crosses TLS. Without,
    plain HTTP, and the stream is read from its buffer.

    It says what it does as it goes, and shows the reading's progress (offering each message to ``latest``, a
    viewer's, if given). Returns the outcome (the account, the rates,
    the stream's final state and its reason, how it was secured) and whether the stream completed.
    StreamIncomplete if the events did not all arrive. On Ctrl-C (KeyboardInterrupt, raised again) the stream is
    cancelled, its jobs and the service stopped (:func:`demo_service`): nothing the demo started outlives it.
    """
    from beamstream.service_client import ServiceClient
    from beamstream.protocol.states import State

    with tempfile.TemporaryDirectory(prefix="beamstream-demo-", ignore_cleanup_errors=True) as folder:
        if tls:
            _say("making a CA and certificates for the demo…")
        credentials = demo_credentials(Path(folder) / "ca") if tls else None
        client_tls = {} if credentials is None else credentials.client
        _say("starting a request service…")
        with (demo_service(Path(folder), credentials) as url, ServiceClient(url, **client_tls) as service):
            _say(f"request service at {url}: asking it for {events:,} images from {workers} producers…")
            stream = service.request(demo_spec_data(events, shape, serializer, batch), resources={"workers": workers})
            stream.wait_until_running()
            _say(f"stream {stream.id} running: reading it {'through the relay' if credentials else 'from its buffer'}…")
            with stream.client(relay=credentials is not None) as client:
                try:
                    seconds = _read(client, latest)
                finally:
                    stream.report = client.report
            *_, final = stream.changes()
    rates = _rates(stream.report, seconds, workers, shape, serializer, batch)
    completed = final.state is State.COMPLETED
    verdict = "complete" if (stream.view["verdict"] or {}).get("complete") else "not complete"
    ended = f"{final.state.value}, verdict {verdict}" if completed else f"{final.state.value}: {final.reason}"
    secured = (f"with mutual TLS, as {credentials.user} (owner {stream.view['owner']}), read through the relay; "
               f"certificates from a CA made for the demo" if credentials is not None else "without TLS (plain HTTP)")
    return (f"{stream.report.summary()}\n{rates}\nrequest service at {url}: stream {stream.id} {ended}\n"
            f"ran {secured}"), completed


@contextmanager
def beside_a_viewer(view: bool) -> Iterator[ViewerServer | None]:
    """With ``view``, the stream viewer (:mod:`beamstream.viewer`) on a free port of 127.0.0.1 while the block runs,
    its URL said; the demo offers it each message it reads (``.latest``). Without, None. MissingDependency
    without the ``service`` extra (uvicorn, starlette)."""
    if not view:
        yield None
        return
    from beamstream.errors import MissingDependency, needs_extra

    try:
        from beamstream.viewer.latest import Latest
        from beamstream.viewer.serve import ViewerServer
    except ImportError as exc:
        raise MissingDependency(needs_extra("the viewer", "service", cause=exc)) from exc
    with ViewerServer(Latest("the demo's stream")) as viewer:
        _say(f"viewer: {viewer.url}")
        yield viewer


@dataclass(frozen=True)
class DemoCredentials:
    """The demo's TLS files: the user it runs as, the service's settings, the client's files."""

    user: str
    settings: dict[str, str]  # BEAMSTREAM_SERVICE_TLS_* variables
    client: dict[str, Path]  # ServiceClient(cert=, key=, ca=)


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

    With ``credentials``, with their TLS settings (an https:// URL). The service runs in a process group of its
    own, so that Ctrl-C on the terminal reaches the demo, which stops the service, and not the service, which
    would end before the demo's stream was cancelled; it is sent SIGTERM should the demo die (Linux). On leaving,
    its streams that have not ended are cancelled and their jobs stopped (:func:`_end_streams`), then it is
    stopped (SIGTERM), Ctrl-C ignored meanwhile so that nothing is left running. ServiceError, with its output, if
    it does not listen within SERVICE_START_S.
    """
    log = folder / "service.log"
    environment = {**os.environ, "BEAMSTREAM_SERVICE_EXECUTOR": "local", "BEAMSTREAM_SERVICE_EXECUTORS": '["local"]',
                   "BEAMSTREAM_SERVICE_DRAIN_GRACE_S": "10", **(credentials.settings if credentials else {})}
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "beamstream.cli", "service", "--host", "127.0.0.1",
                                    "--port", "0", "--database-url", f"sqlite:///{folder / 'service.db'}",
                                    "--state-dir", str(folder / "state")],
                                   stdout=output, stderr=subprocess.STDOUT, env=environment, process_group=0,
                                   preexec_fn=terminate_with_parent)  # (Linux)
    store = None
    try:
        url = _listening(process, log)
        store = _job_store(folder)
        yield url
    finally:
        with _sigint_ignored():
            try:
                if store is not None:
                    _end_streams(store, url, credentials)
            finally:
                _stop(process)


def _listening(process: subprocess.Popen, log: Path) -> str:
    """The URL the service ``process`` says (in ``log``) it listens at; ServiceError, with its output, if it ends
    or says nothing within SERVICE_START_S."""
    deadline = time.monotonic() + SERVICE_START_S
    while not (found := re.search(r"service: (https?://\S+)", log.read_text(errors="replace"))):
        if process.poll() is not None or time.monotonic() > deadline:
            raise ServiceError(f"the demo's service did not start (exit code {process.poll()}):\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return found.group(1)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) is ignored (in the main thread, where it is handled; elsewhere nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _job_store(folder: Path) -> JobStore:
    """The job store of the demo's service (its job store in ``folder``), to find its jobs in; opened while the
    service starts, so that a Ctrl-C does not wait for its modules to be imported."""
    from sqlalchemy import create_engine

    from beamstream.service.store import JobStore

    return JobStore(create_engine(f"sqlite:///{folder / 'service.db'}"))


def _end_streams(store: JobStore, url: str, credentials: DemoCredentials | None) -> None:
    """Cancel the streams of the demo's service (at ``url``, its jobs in ``store``) that have not ended and stop
    their jobs at once; then wait until none of its jobs runs (:data:`JOBS_END_S` at most), and close ``store``.

    The demo stops the jobs itself (SIGTERM, through the service's local executor): the service keeps a cancelled
    stream's buffer a few seconds for its readers, and the demo, its only reader, is gone. A producers job the
    service stopped already so gets its second SIGTERM, which kills its workers at once: their aborted end messages
    have nobody to go to."""
    from beamstream.service_client import ServiceClient
    from beamstream.service.executors import JobRequest, JobState, LocalExecutor

    executor = LocalExecutor()
    try:
        with ServiceClient(url, **(credentials.client if credentials else {})) as service:
            streams = service.streams()
            for stream in streams:
                if not stream.state.final:
                    _cancel(stream)
                    for job in store.jobs(stream.id).values():
                        executor.cancel(job.native_id)

        def running() -> bool:
            return any(executor.status(job.native_id, JobRequest(job.role, [], Path(job.directory))).state
                       is JobState.RUNNING for stream in streams for job in store.jobs(stream.id).values())

        deadline = time.monotonic() + JOBS_END_S
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        store.close()


def _stop(process: subprocess.Popen) -> None:
    """Stop the service ``process`` (SIGTERM; SIGKILL if it is still running 30 s later) and wait for it."""
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


def _say(line: str) -> None:
    """Tell the user what the demo is doing."""
    console.print(line, highlight=False)


def _rates(report: StreamReport, seconds: float, workers: int, shape: tuple[int, int], serializer: str,
           batch: int) -> str:
    return (f"{report.events:,} events of {shape[0]}×{shape[1]} uint16 ({serializer}, {batch}/message) from "
            f"{workers} workers in {seconds:.2f} s: {report.events / seconds:,.0f} events/s, "
            f"{report.bytes / 1e6 / seconds:,.1f} MB/s")
