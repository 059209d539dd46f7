"""``beamstream demo``: simulated images from N producer processes to a client in this process.

With ``--service``, the same stream is asked of a request service (started for the demo, then
stopped) and read through the Python API (:class:`~beamstream.remote.Service`).
"""

from __future__ import annotations

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
                     batch: int) -> tuple[str, bool]:
    """Start a request service (job store and stream folders in a temporary folder, local jobs), ask it for
    ``events`` images from ``workers`` producers, read them through :class:`~beamstream.remote.Service`, stop it.

    Returns the outcome (the account, the rates, the stream's final state and its reason) and whether the
    stream completed. StreamIncomplete if the events did not all arrive.
    """
    from beamstream.remote import Service
    from beamstream.service.states import State

    with (tempfile.TemporaryDirectory(prefix="beamstream-demo-", ignore_cleanup_errors=True) as folder,
          demo_service(Path(folder)) as url, Service(url) as service):
        stream = service.request(demo_spec_data(events, shape, serializer, batch), resources={"workers": workers})
        first = None
        for _ in stream:
            first = first or time.perf_counter()
        seconds = time.perf_counter() - first
        *_, final = stream.changes()
    rates = _rates(stream.report, seconds, workers, shape, serializer, batch)
    completed = final.state is State.COMPLETED
    verdict = "complete" if (stream.view["verdict"] or {}).get("complete") else "not complete"
    ended = f"{final.state.value}, verdict {verdict}" if completed else f"{final.state.value}: {final.reason}"
    return f"{stream.report.summary()}\n{rates}\nrequest service at {url}: stream {stream.id} {ended}", completed


@contextmanager
def demo_service(folder: Path) -> Iterator[str]:
    """``beamstream service`` on a free port with its job store and state in ``folder`` and local jobs; its URL.

    On leaving, its streams that have not ended are cancelled (their jobs would outlive it), then it
    is stopped (SIGTERM). ServiceError, with its output, if it does not listen within SERVICE_START_S.
    """
    from beamstream.remote import Service

    log = folder / "service.log"
    environment = {**os.environ, "BEAMSTREAM_SERVICE_EXECUTOR": "local", "BEAMSTREAM_SERVICE_EXECUTORS": '["local"]',
                   "BEAMSTREAM_SERVICE_DRAIN_GRACE_S": "10"}
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "beamstream.cli", "service", "--host", "127.0.0.1",
                                    "--port", "0", "--database-url", f"sqlite:///{folder / 'service.db'}",
                                    "--state-dir", str(folder / "state")],
                                   stdout=output, stderr=subprocess.STDOUT, env=environment)
    try:
        deadline = time.monotonic() + SERVICE_START_S
        while not (found := re.search(r"service: (http://\S+)", log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"the demo's service did not start (exit code {process.poll()}):\n"
                                   f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        url = found.group(1)
        try:
            yield url
        finally:
            with Service(url) as service:
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
