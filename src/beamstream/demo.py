"""``beamstream demo``: simulated images from N producer processes to a client in this process."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from beamstream.client import Client
from beamstream.producer import RunResult, run_local
from beamstream.spec import parse_spec


def demo_spec(endpoint: str, events: int, shape: tuple[int, int], serializer: str, batch: int) -> object:
    """A simulated image stream sent to ``endpoint``."""
    return parse_spec({
        "name": "demo",
        "source": {"type": "simulated", "n_events": events, "bank_size": 8,
                   "detectors": [{"kind": "image", "shape": list(shape)}]},
        "steps": [{"type": "batch", "size": batch}],
        "serializer": {"type": serializer},
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    }, origin="demo")


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
    return (f"{report.summary()}\n{report.events:,} events of {shape[0]}×{shape[1]} uint16 "
            f"({serializer}, {batch}/message) from {workers} workers in {seconds:.2f} s: "
            f"{report.events / seconds:,.0f} events/s, {report.bytes / 1e9 / seconds:.2f} GB/s")
