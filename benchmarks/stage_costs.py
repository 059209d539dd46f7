"""What each stage of a stream costs on this machine: bytes and messages per CPU second, for docs/scaling.md.

    .venv/bin/python benchmarks/stage_costs.py --out benchmarks/stage_costs.json   # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/stage_costs.py --quick                             # under a minute, printed only

Every figure is a cost per CPU second of a whole process (user + system time of all its threads, ZeroMQ's
I/O threads included), so it says how much one core does, whatever else runs on the machine; a figure
from a busy or slow machine is a lower bound for a faster one. Stages:

  producer     a producer process (simulated source, ``arrays`` serializer, ``stream`` sink) sending to a
               Client in this process over ipc://: its CPU per byte with 8 MiB images, one a message, and
               per message with 16 kB waveforms, one a message. The source hands out views of a bank it drew
               at start: reading a real detector is not in it.
  client       the receiving side of the same runs: this process's CPU (receiving, verifying checksums).
  buffer       producer → ``beamstream buffer`` (its own process) → one group read by a Client here: the
               buffer process's CPU, same messages as above.
  nats         producer → ``beamstream buffer --backend nats://127.0.0.1:4222/…`` → one group reading
               JetStream: CPU of nats-server (the process listening on port 4222) and the bridge (the
               buffer process) per byte, and the one stream's rate; skipped, saying so, when no server
               listens there or its process does not show.
  relay        ``beamstream service``: a stream of 2 MiB images read whole through the relay (WebSocket)
               after a direct read of it; the service process's CPU during the relayed read, less its
               rate while idle (measured over the direct read), per byte relayed.
  cfd          the ``cfd`` step on 8192-sample int16 waveforms (benchmarks/tof.py's), waveforms per CPU
               second of this process, and the bytes a waveform's hits take on the wire.
  peakfinder8  the ``peakfinder8`` step, numba engine, on 1024×1024 uint16 frames (benchmarks/peakfinding.py's),
               images per CPU second.

The stream stages are timed in the steady state, over a window of the messages the Client receives (from
the 10th to the 90th percent of them, :class:`Window`): process start-up, connecting and the simulated source
drawing its bank are left out without subtracting two noisy runs. CPU times come from ``time.process_time``
(this process) and ``/proc/PID/stat`` (the others); each figure is the median of ``ROUNDS`` runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per figure (as tof.py and tof_stream.py)

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from buffer import BEAMSTREAM, NATS, delete_nats_stream  # noqa: E402
from peakfinding import step_rate  # noqa: E402
from request_latency import POLL_S, read_rate, request  # noqa: E402
from servicekit import run_service, shown, stop_service  # noqa: E402
from throughput import CLIENT_HWM, image_spec, small_spec  # noqa: E402
from timing import timed_run  # noqa: E402
from tof import OPTIONS, SAMPLES, rate, waveforms  # noqa: E402

from beamstream.batch import Batch  # noqa: E402
from beamstream.jetstream.urls import listening  # noqa: E402
from beamstream.sources.simulated import SimulatedSource  # noqa: E402
from beamstream.steps.tof import CfdStep  # noqa: E402

RELAY_IMAGE_BYTES = 1024 * 1024 * 2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# messages a run, per stream stage: --quick, full
SIZES = {"images": (100, 300), "small": (4000, 12000), "buffer images": (100, 300), "buffer small": (3000, 9000),
         "nats images": (40, 100)}
ROUNDS = (1, 3)  # runs of each stream stage, the median of each figure kept: --quick, full
# the buffer reuses freed message memory once it holds this much (before, each message lands in fresh pages): the
# window starts past it, so that it times the steady state
BUFFER_MEMORY = "128MiB"
RELAY_IMAGES = (60, 200)  # 2 MiB images in the relayed stream: --quick, full
Spec = Callable[[int], Callable[[str], object]]  # events → (endpoint → a stream spec), as throughput.py's


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (``/proc/PID/stat``), not its
    children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def nats_server_pid() -> int | None:
    """The pid of the process listening on NATS's port (the server whose CPU a JetStream stream there costs; other
    nats-server processes may run, a test's cluster), or None if none shows here."""
    port = urllib.parse.urlsplit(NATS).port
    return next((each.pid for each in psutil.net_connections("tcp")
                 if each.status == psutil.CONN_LISTEN and each.laddr.port == port and each.pid), None)


class Window:
    """CPU seconds used between two messages of a timed read, per message: an ``each`` callback for
    :func:`timing.timed_run` reading ``count`` messages.

    At the message that is 10 % of ``count`` in and at the one 90 % in, it reads the CPU of this process (the
    client: ``time.process_time``, every thread), of the processes ``pids`` names and, if ``producers``, of this
    process's multiprocessing children (the producer workers, still running then: a producer is at most a few
    messages ahead). :meth:`per_message` divides the differences by the messages between the two.
    """

    def __init__(self, count: int, pids: dict[str, int] | None = None, producers: bool = False) -> None:
        self.first, self.last = count // 10, count * 9 // 10
        self.pids, self.producers = dict(pids or {}), producers
        self.seen = self.bytes = 0
        self.readings: list[dict[str, float]] = []

    def __call__(self, message: Any) -> None:
        self.seen += 1
        if self.first < self.seen <= self.last:
            self.bytes += message.header.nbytes
        if self.seen in (self.first, self.last):
            if self.producers and not self.readings:
                self.pids.update({f"producer {child.pid}": child.pid for child in multiprocessing.active_children()})
            self.readings.append({"client": time.process_time(), "wall": time.perf_counter(),
                                  **{name: process_cpu(pid) for name, pid in self.pids.items()}})

    def per_message(self) -> dict[str, float]:
        """Seconds per message of ``client``, ``wall``, ``producer`` (the workers together) and each of ``pids``,
        and the payload ``bytes`` per message, over the window."""
        if len(self.readings) != 2:
            raise RuntimeError(f"the window saw {self.seen} messages, fewer than the {self.last} it needs")
        (start, end), count = self.readings, self.last - self.first
        used = {name: (end[name] - start[name]) / count for name in start}
        workers = [name for name in used if name.startswith("producer ")]
        if workers:
            used["producer"] = sum(used.pop(name) for name in workers)
        return {**used, "bytes": self.bytes / count}


def median_of(rounds: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The median of each figure over ``rounds`` calls of ``run``."""
    samples = [run() for _ in range(rounds)]
    return {name: statistics.median(sample[name] for sample in samples) for name in samples[0]}


def runs(stage: str, quick: bool) -> str:
    """How a stream stage of SIZES was timed, in words."""
    rounds = ROUNDS[not quick]
    median = f", median of {rounds} runs" if rounds > 1 else ""
    return f"runs of {SIZES[stage][not quick]} messages timed from the 10th to the 90th percent of them{median}"


def figure(value: float, units: str) -> dict:
    return {"value": float(f"{value:.4g}"), "units": units}


# --- producer and client: the direct path --------------------------------------------------------------------


def direct_run(folder: Path, spec_for: Spec, count: int) -> dict[str, float]:
    """Seconds per message of the producer and the Client, ``count`` messages from one producer over ipc://."""
    from beamstream.client import Client

    endpoint = f"ipc://{folder}/direct-{uuid.uuid4().hex[:8]}"
    window = Window(count, producers=True)
    with Client(endpoint, bind=True, timeout=120.0, hwm=CLIENT_HWM) as client:
        timed_run(client, spec_for(count)(endpoint), 1, each=window, name="direct")
    return window.per_message()


def direct(folder: Path, quick: bool) -> dict[str, dict]:
    """The producer's and the client's CPU per byte (8 MiB images) and per message (16 kB waveforms)."""
    rounds = ROUNDS[not quick]
    images = median_of(rounds, lambda: direct_run(folder, lambda n: image_spec({"type": "arrays"}, n),
                                                   SIZES["images"][not quick]))
    small = median_of(rounds, lambda: direct_run(folder, lambda n: small_spec(n, 1), SIZES["small"][not quick]))
    print(f"direct  : per 8 MiB image producer {images['producer'] * 1e3:.2f} ms, client {images['client'] * 1e3:.2f} "
          f"ms, wall {images['wall'] * 1e3:.2f} ms; per 16 kB message producer {small['producer'] * 1e6:.0f} µs, "
          f"client {small['client'] * 1e6:.0f} µs, wall {small['wall'] * 1e6:.0f} µs", flush=True)
    what = {"producer": "the producer process (simulated source, arrays serializer, stream sink)",
            "client": "the Client's process (receiving, verifying checksums)"}
    return {side: {
        "measured": f"one producer → one Client over ipc://: CPU of {what[side]} per message; bytes: 8 MiB images one "
                    f"a message ({runs('images', quick)}); messages: 16 kB waveforms one a message "
                    f"({runs('small', quick)})",
        "bytes_per_cpu_s": figure(images["bytes"] / images[side], "payload bytes per CPU second"),
        "messages_per_cpu_s": figure(1 / small[side], "messages per CPU second (16 kB each)"),
    } for side in ("producer", "client")}


# --- the buffer and the NATS bridge ----------------------------------------------------------------------------


def through_buffer(folder: Path, spec_for: Spec, count: int, nats_pid: int | None = None) -> dict[str, float]:
    """Seconds per message of the buffer process (and of nats-server, when ``nats_pid``) while a Client reads
    ``count`` messages from one producer through it as one group (:class:`Window`), and the wall seconds and
    payload bytes per message."""
    from beamstream.client import Client

    run = uuid.uuid4().hex[:8]
    producers = f"ipc://{folder}/in-{run}"
    consumers = f"{NATS}/costs-{run}" if nats_pid else f"ipc://{folder}/out-{run}"
    where = ["--backend" if nats_pid else "--consumer-endpoint", consumers]
    buffer = subprocess.Popen([*BEAMSTREAM, "buffer", "--producer-endpoint", producers, *where,
                               "--max-memory", BUFFER_MEMORY],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    window = Window(count, {"buffer": buffer.pid, **({"nats-server": nats_pid} if nats_pid else {})})
    try:
        with Client(consumers, group="g0", timeout=120) as client:
            timed_run(client, spec_for(count)(producers), 1, each=window, name="through the buffer")
        return window.per_message()
    finally:
        buffer.terminate()
        buffer.wait(30)
        if nats_pid:
            delete_nats_stream(consumers)


def buffer_costs(folder: Path, quick: bool) -> dict:
    rounds = ROUNDS[not quick]
    images = median_of(rounds, lambda: through_buffer(folder, lambda n: image_spec({"type": "arrays"}, n),
                                                      SIZES["buffer images"][not quick]))
    small = median_of(rounds, lambda: through_buffer(folder, lambda n: small_spec(n, 1),
                                                     SIZES["buffer small"][not quick]))
    print(f"buffer  : per 8 MiB image {images['buffer'] * 1e3:.2f} ms, per 16 kB message "
          f"{small['buffer'] * 1e6:.0f} µs of the buffer process", flush=True)
    return {
        "measured": f"beamstream buffer process (ipc:// in and out, --max-memory {BUFFER_MEMORY}) between one "
                    f"producer and one group of one Client: its CPU per message; bytes: 8 MiB images one a message "
                    f"({runs('buffer images', quick)}); messages: 16 kB waveforms one a message "
                    f"({runs('buffer small', quick)})",
        "bytes_per_cpu_s": figure(images["bytes"] / images["buffer"], "payload bytes per CPU second"),
        "messages_per_cpu_s": figure(1 / small["buffer"], "messages per CPU second (16 kB each)"),
    }


def nats_costs(folder: Path, quick: bool) -> dict:
    pid = nats_server_pid()
    if not listening(NATS) or pid is None:
        reason = (f"no NATS server listens at {NATS}" if not listening(NATS) else
                  f"a NATS server listens at {NATS}, but no nats-server process shows here to measure its CPU")
        print(f"nats    : skipped: {reason}", flush=True)
        return {"skipped": reason}
    images = median_of(ROUNDS[not quick], lambda: through_buffer(
        folder, lambda n: image_spec({"type": "arrays"}, n), SIZES["nats images"][not quick], nats_pid=pid))
    stream_rate = images["bytes"] / images["wall"]
    print(f"nats    : per 8 MiB image nats-server {images['nats-server'] * 1e3:.2f} ms, bridge "
          f"{images['buffer'] * 1e3:.2f} ms; one stream {stream_rate / 1e9:.2f} GB/s", flush=True)
    return {
        "measured": f"beamstream buffer --backend {NATS}/… (the bridge) and nats-server (JetStream, file storage) "
                    "between one producer and one group of one Client reading JetStream, 8 MiB images one a message "
                    f"({runs('nats images', quick)}): CPU of nats-server and the bridge per message (nats-server's "
                    "counts whatever else used it meanwhile); the stream's rate: payload bytes over the wall "
                    "seconds of the same window, every process on this machine's cores",
        "bytes_per_cpu_s": figure(images["bytes"] / (images["nats-server"] + images["buffer"]),
                                  "payload bytes per CPU second of nats-server and the bridge together"),
        "server_bytes_per_cpu_s": figure(images["bytes"] / images["nats-server"],
                                         "payload bytes per CPU second of nats-server"),
        "stream_bytes_per_s": figure(stream_rate, "payload bytes per second through one JetStream stream"),
    }


# --- the relay ------------------------------------------------------------------------------------------------


def relay_costs(folder: Path, quick: bool) -> dict:
    """The service process's CPU per byte it relays (see the module's docstring)."""
    from beamstream.client import Client

    images = RELAY_IMAGES[not quick]
    (folder / "relay").mkdir()
    process, url = run_service(folder / "relay", drain_grace_s="600")
    spec = {"source": {"type": "simulated", "n_events": images, "events_per_read": 1, "bank_size": 4,
                       "detectors": [{"kind": "image", "shape": [1024, 1024], "dtype": "uint16"}]}}
    try:
        stream_id, key = request(url, spec)
        deadline = time.monotonic() + 60
        while (view := shown(url, stream_id))["state"] != "running":
            if time.monotonic() > deadline or view["state"] in ("completed", "failed", "cancelled"):
                raise RuntimeError(f"relay: stream {stream_id} is {view['state']}, not running, after 60 s")
            time.sleep(POLL_S)
        # every member joins before the producers end: the service stops a buffer once every group read all
        readers = {group: Client(endpoint, group=group, timeout=120, key=key) for group, endpoint in
                   (("warm-up", view["endpoints"]["consumers"]), ("direct", view["endpoints"]["consumers"]),
                    ("relay", f"{url}/v1/streams/{stream_id}"))}
        read_rate(readers["warm-up"])  # every message is in the buffer from now on
        used = {}
        for group in ("direct", "relay"):
            cpu, start = process_cpu(process.pid), time.perf_counter()
            gb_per_s, events = read_rate(readers[group])
            used[group] = (process_cpu(process.pid) - cpu, time.perf_counter() - start, gb_per_s, events)
    finally:
        stop_service(process, url)
    idle = used["direct"][0] / used["direct"][1]
    cpu, seconds, gb_per_s, events = used["relay"]
    relayed = cpu - idle * seconds
    nbytes = events * RELAY_IMAGE_BYTES
    print(f"relay   : {events} × 2 MiB through the relay at {gb_per_s:.2f} GB/s (direct {used['direct'][2]:.2f}): "
          f"service CPU {cpu:.2f} s, less {idle * seconds:.2f} s idle, {relayed / events * 1e3:.2f} ms a message",
          flush=True)
    return {
        "measured": f"beamstream service relaying one stream of {events} simulated 2 MiB images, one a message, read "
                    "whole through the relay (WebSocket) with the default hwm 4 after the whole stream was in its "
                    "buffer: CPU of the service process (not its jobs) during the read, less its idle rate measured "
                    "during a direct read of the same stream just before",
        "bytes_per_cpu_s": figure(nbytes / relayed, "payload bytes per CPU second of the service's process"),
        "stream_bytes_per_s": figure(gb_per_s * 1e9, "payload bytes per second through one relayed reader"),
    }


# --- cfd and peakfinder8: one core each -------------------------------------------------------------------------


def cfd_costs(quick: bool) -> dict:
    events, repeat = (1024, 3) if quick else (4096, 5)
    data = waveforms(events, "int16")
    batch = Batch(np.arange(len(data)), np.zeros(len(data)), {"waveform": data})
    step = CfdStep(field="waveform", **OPTIONS).build()
    per_cpu_s, _ = rate(lambda: step.apply(batch), events, repeat)
    found = step.apply(batch).data
    hit_bytes = (found["waveform_cfd"].nbytes + found["waveform_cfd_count"].nbytes) / events
    print(f"cfd     : {per_cpu_s:,.0f} waveforms per CPU second; hits {hit_bytes:.0f} bytes a waveform", flush=True)
    return {
        "measured": f"the cfd step (CfdFinder.apply, threshold {OPTIONS['threshold']}, delay {OPTIONS['delay']}, "
                    f"fraction {OPTIONS['fraction']}) on one batch of {events} simulated {SAMPLES}-sample int16 "
                    f"waveforms with 5 hits each, this process's CPU, median of {repeat} runs",
        "waveforms_per_cpu_s": figure(per_cpu_s, "waveforms per CPU second"),
        "hit_bytes_per_waveform": figure(hit_bytes, "bytes of the cfd step's hit fields a waveform"),
    }


def peakfinder_costs(quick: bool) -> dict:
    frames = SimulatedSource(bank_size=16).open().bank()["image"]
    count = 16 if quick else 64
    per_cpu_s, peaks = step_rate("numba", frames, count)
    pixels = frames[0].size
    print(f"peaks   : {per_cpu_s:.1f} images per CPU second ({pixels / 1e6:.2f} Mpix, {peaks / count:.1f} peaks an "
          "image)", flush=True)
    return {
        "measured": f"the peakfinder8 step, numba engine, default settings, on {count} simulated {frames.shape[1]}×"
                    f"{frames.shape[2]} uint16 frames with 10 peaks each, one a call, this process's CPU, first call "
                    "left out",
        "images_per_cpu_s": figure(per_cpu_s, f"{frames.shape[1]}×{frames.shape[2]} images per CPU second"),
        "pixels_per_cpu_s": figure(per_cpu_s * pixels, "pixels per CPU second"),
    }


# --- the record -------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def code_version() -> str:
    """The commit checked out here, and whether the working tree differs from it (``git describe``)."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                                   capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git here)"
    return described.replace("-dirty", " with uncommitted changes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (under a minute); figures are noisier")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here (scaling.py reads "
                                                                "benchmarks/stage_costs.json)")
    args = parser.parse_args()
    load_before, started = os.getloadavg(), time.monotonic()
    stages: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="beamstream-costs-") as tmp:
        folder = Path(tmp)
        stages.update(direct(folder, args.quick))
        stages["buffer"] = buffer_costs(folder, args.quick)
        stages["nats"] = nats_costs(folder, args.quick)
        stages["relay"] = relay_costs(folder, args.quick)
    stages["cfd"] = cfd_costs(args.quick)
    stages["peakfinder8"] = peakfinder_costs(args.quick)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "seconds": round(time.monotonic() - started, 1),
        "code": code_version(),
        "machine": {"cores": len(os.sched_getaffinity(0)), "cpu_model": cpu_model(), "node": platform.node(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "stages": stages,
    }
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"written : {args.out}")
    else:
        print(text)
    print(f"took {record['seconds']:.0f} s; load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after")


if __name__ == "__main__":
    main()
