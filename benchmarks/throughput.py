"""beamstream throughput and latency on this machine, next to raw pyzmq.

    python benchmarks/throughput.py              # full run (>= 2.5 GB per throughput run)
    python benchmarks/throughput.py --quick      # about 4x less data, 1 run per row
    python benchmarks/throughput.py --only baseline,arrays --workers 1
    python benchmarks/throughput.py --no-verify  # also the rows with Client(verify=False)

Every row uses the same transport: ipc:// in a temporary folder (what ``beamstream demo``
uses). The consumer runs in this process; producers run in spawned processes, as in
production (``beamstream.producer.run_local``). Rates are measured from the first message
received to the last, so process start-up (and the simulated source drawing its bank) is
left out: rate = bytes (or events) received after the first message / (t_last - t_first).

The machine is shared and noisy (the raw baseline alone varies by ±30 % between runs), so
each beamstream row is run ``--repeat`` times (default 5), every run right after a baseline
run of its own; the row shows the median rate and the median of the per-pair ratios.

Rows:
  baseline  raw pyzmq PUSH/PULL (pyzmq's default HWM 1000), one 8 MiB frame per message,
            zero-copy send of one preallocated buffer from a spawned process, recv(copy=False).
  arrays    simulated 2048×2048 uint16 images (8 MiB), ``arrays`` serializer, one event per
            message (no batch step), 1 and 2 producer workers. Target: ratio >= 0.85.
  hdf5      the same with the ``hdf5`` serializer, compression none. Target: ratio >= 0.7 (issue 24).
  shm       the ``arrays`` row over shm:// (payloads in the producers' shared memory, read as views of it;
            docs/wire-format.md, "Shared memory"). Target: ratio >= 2.0 (issue 24: one write by the
            source and one read by the consumer, against raw ZeroMQ's two copies through the kernel).
  small     simulated 4096-sample float32 waveforms (16 kB/event), ``arrays``, a batch step of
            ``--batch`` events per message, 1 and 2 workers. Target: >= 100 000 events/s.
  latency   16 kB waveforms at rate_hz=1000, one event per message, one worker, 3000 events:
            client receive time (time.time() when the message is yielded) minus the event's
            creation time (message.header.time). Target: p99 < 5 ms.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).parent))
from timing import timed_run  # noqa: E402

IMAGE_SHAPE = (2048, 2048)  # uint16: 8 MiB per event
FRAME_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * 2
WAVEFORM_SAMPLES = 4096  # float32: 16 kB per event

# Spec options (see benchmarks/README.md for what was tried). These are the package defaults
# except the batch size: more queueing (hwm 16, 1000) measured no better than 4 within the noise.
SINK_HWM = 4  # StreamSink hwm (default 4)
CLIENT_HWM = 4  # Client hwm (default 4)
IMAGE_BANK = 4  # distinct 2048×2048 frames drawn per worker (each takes ~0.3 s to draw)
SMALL_BATCH = 256  # waveforms per message (4 MiB): 128-512 measured best, 32 and 2000 clearly worse

_RUNS = itertools.count()


@dataclass
class Row:
    name: str
    value: float  # in ``unit``
    unit: str  # GB/s, events/s or "ms p99"
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""


# --- raw pyzmq baseline ---------------------------------------------------------------------


def _raw_sender(endpoint: str, count: int, nbytes: int) -> None:
    """Send ``count`` zero-copy messages of one preallocated buffer, then an empty end frame."""
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.connect(endpoint)
    buffer = np.ones(nbytes, dtype=np.uint8)  # touched, so its pages exist before the first send
    for _ in range(count):
        socket.send(buffer, copy=False)
    socket.send(b"")
    socket.close()  # default linger: waits until everything is delivered
    context.term()


def bench_baseline(folder: Path, count: int) -> float:
    """GB/s of raw pyzmq PUSH/PULL, 8 MiB messages, sender in a spawned process."""
    endpoint = f"ipc://{folder / 'raw'}-{next(_RUNS)}"
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.bind(endpoint)
    sender = multiprocessing.get_context("spawn").Process(target=_raw_sender, args=(endpoint, count, FRAME_BYTES))
    sender.start()
    first = last = None
    received = 0
    silent_since = time.monotonic()
    try:
        while True:
            if not socket.poll(1000):
                if sender.exitcode not in (None, 0) or time.monotonic() - silent_since > 60:
                    raise RuntimeError(f"baseline: nothing arrives (sender exit code {sender.exitcode})")
                continue
            silent_since = time.monotonic()
            frame = socket.recv(copy=False)
            size = len(frame.buffer)
            if size == 0:
                break
            last = time.perf_counter()
            if first is None:
                first = last
            else:
                received += size
    finally:
        sender.join(10)
        if sender.is_alive():
            sender.terminate()
            sender.join()
        socket.close(linger=0)
        context.term()
    return received / (last - first) / 1e9


# --- beamstream producer → client -----------------------------------------------------------


def _spec(endpoint: str, source: dict, serializer: dict, steps: list | None = None) -> object:
    from beamstream.spec import parse_spec

    return parse_spec({
        "name": "benchmark",
        "source": {"type": "simulated", **source},
        "steps": steps or [],
        "serializer": serializer,
        "sinks": [{"type": "stream", "endpoint": endpoint, "hwm": SINK_HWM}],
    }, origin="benchmark")


def image_spec(serializer: dict, events: int) -> Callable[[str], object]:
    """8 MiB images, one event per read and per message (no batch step)."""
    return lambda endpoint: _spec(endpoint, {
        "n_events": events, "bank_size": IMAGE_BANK, "events_per_read": 1,
        "detectors": [{"kind": "image", "shape": list(IMAGE_SHAPE), "dtype": "uint16"}],
    }, serializer)


def small_spec(events: int, batch: int) -> Callable[[str], object]:
    """16 kB waveforms read ``batch`` at a time (views of the bank), ``batch`` per message."""
    return lambda endpoint: _spec(endpoint, {
        "n_events": events, "bank_size": batch, "events_per_read": batch,
        "detectors": [{"kind": "waveform", "samples": WAVEFORM_SAMPLES, "dtype": "float32", "hits": 2}],
    }, {"type": "arrays"}, steps=[{"type": "batch", "size": batch}])


def latency_spec(events: int) -> Callable[[str], object]:
    """16 kB waveforms paced at 1 kHz, one event per message."""
    return lambda endpoint: _spec(endpoint, {
        "n_events": events, "rate_hz": 1000.0, "bank_size": 16, "events_per_read": 1,
        "detectors": [{"kind": "waveform", "samples": WAVEFORM_SAMPLES, "dtype": "float32", "hits": 2}],
    }, {"type": "arrays"})


@dataclass
class StreamRun:
    seconds: float  # first message to last
    bytes: int  # payload bytes after the first message
    events: int  # events after the first message
    messages: int
    latencies: np.ndarray  # per event, seconds: receive time - creation time
    producer_lag: np.ndarray  # per event, seconds: header.sent - creation time (time spent in the producer)


def run_stream(folder: Path, name: str, spec_for: Callable[[str], object], workers: int, verify: bool = True,
               keep_latency: bool = False) -> StreamRun:
    """Run ``spec_for(endpoint)`` in ``workers`` spawned processes into a Client in this process."""
    from beamstream.client import Client

    scheme = "shm" if name == "shm" else "ipc"  # the shm row: payloads through shared memory
    endpoint = f"{scheme}://{folder / name}-{next(_RUNS)}"
    spec = spec_for(endpoint)
    latencies: list[np.ndarray] = []
    producer_lag: list[np.ndarray] = []

    def latency(message: Any) -> None:
        latencies.append(time.time() - message.header.time)
        producer_lag.append(message.header.sent - message.header.time)

    with Client(endpoint, bind=True, timeout=120.0, verify=verify, hwm=CLIENT_HWM) as client:
        received = timed_run(client, spec, workers, each=latency if keep_latency else None, name=name)
    return StreamRun(received.seconds, received.bytes, received.events, received.messages,
                     np.concatenate(latencies) if latencies else np.empty(0),
                     np.concatenate(producer_lag) if producer_lag else np.empty(0))


def paired_row(folder: Path, name: str, spec_for: Callable[[str], object], workers: int, repeat: int,
               raw_messages: int, verify: bool, per_event: bool, target: str,
               check: Callable[[float, float], bool] | None) -> tuple[Row, list[float]]:
    """``repeat`` runs of one beamstream row, each right after a baseline run; medians of rate and ratio.

    Pairing each run with a baseline measured just before it keeps the ratio meaningful on a
    machine whose speed drifts (shared cores, other jobs).
    """
    rates, ratios, gbps, baselines = [], [], [], []
    for _ in range(repeat):
        base = bench_baseline(folder, raw_messages)
        run = run_stream(folder, name.split()[0], spec_for, workers, verify=verify)
        bandwidth = run.bytes / run.seconds / 1e9
        baselines.append(base)
        gbps.append(bandwidth)
        ratios.append(bandwidth / base)
        rates.append(run.events / run.seconds if per_event else bandwidth)
    rate, ratio = statistics.median(rates), statistics.median(ratios)
    shown = ", ".join(f"{r:,.0f}" if per_event else f"{r:.2f}" for r in rates)
    note = f"runs {shown}; paired baselines " + ", ".join(f"{b:.2f}" for b in baselines)
    if per_event:
        note = f"{statistics.median(gbps):.2f} GB/s; " + note
    label = f"{name}, {workers} worker{'s' * (workers > 1)}" + ("" if verify else ", verify=False")
    passed = None if check is None else check(rate, ratio)
    row = Row(label, rate, "events/s" if per_event else "GB/s", ratio, target, passed, note)
    return row, baselines


def latency_row(folder: Path, events: int) -> Row:
    run = run_stream(folder, "latency", latency_spec(events), 1, keep_latency=True)
    ms = run.latencies * 1e3
    p50, p99, worst = np.percentile(ms, 50), np.percentile(ms, 99), ms.max()
    lag = run.producer_lag * 1e3
    return Row("latency 16 kB waveforms @1 kHz, batch 1, 1 worker", p99, "ms p99", None, "p99 < 5 ms", p99 < 5.0,
               note=f"{len(ms)} events: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {worst:.3f} ms; "
                    f"in the producer (creation→send) p50 {np.percentile(lag, 50):.3f}, p99 {np.percentile(lag, 99):.3f} ms; "
                    f"{run.events / run.seconds:,.0f} events/s delivered")


# --- report -------------------------------------------------------------------------------


def machine_facts() -> str:
    import beamstream

    try:
        import importlib.metadata

        version = importlib.metadata.version("beamstream")
    except Exception:
        version = "?"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([
        f"machine  : {platform.node()}, {platform.platform()}, {platform.processor() or platform.machine()}",
        f"cpus     : nproc {cpus} (os.cpu_count {os.cpu_count()}); load average {load}",
        f"python   : {sys.version.split()[0]} ({sys.executable})",
        f"zmq      : pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}",
        f"packages : numpy {np.__version__}; beamstream {version} from {Path(beamstream.__file__).parent}",
        "transport: ipc:// in a temporary folder (every row; the shm row: shm:// there)",
    ])


def format_value(row: Row) -> str:
    if row.unit == "GB/s":
        return f"{row.value:.2f} GB/s"
    if row.unit == "events/s":
        return f"{row.value:,.0f} ev/s"
    return f"{row.value:.3f} {row.unit}"


def print_row(row: Row) -> None:
    ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
    verdict = "" if row.passed is None else ("PASS" if row.passed else "FAIL")
    print(f"{row.name:<48} {format_value(row):>14} {ratio:>6}  {row.target:<19} {verdict:<4}"
          + (f"  ({row.note})" if row.note else ""), flush=True)


ROWS = ("baseline", "arrays", "hdf5", "shm", "small", "latency")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 4x less data per run, 1 run per row")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows among {','.join(ROWS)}")
    parser.add_argument("--workers", default="1,2", help="worker counts for the producer rows (default 1,2)")
    parser.add_argument("--batch", type=int, default=SMALL_BATCH, help=f"events per message in the small rows (default {SMALL_BATCH})")
    parser.add_argument("--repeat", type=int, default=None, help="runs per row, median shown (default 5; 1 with --quick)")
    parser.add_argument("--sink-hwm", type=int, default=SINK_HWM, help=f"StreamSink hwm (default {SINK_HWM})")
    parser.add_argument("--client-hwm", type=int, default=CLIENT_HWM, help=f"Client hwm (default {CLIENT_HWM})")
    parser.add_argument("--no-verify", action="store_true", help="also run the throughput rows with Client(verify=False)")
    args = parser.parse_args()
    globals().update(SINK_HWM=args.sink_hwm, CLIENT_HWM=args.client_hwm)
    rows = set(args.only.split(","))
    if unknown := rows - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose among {','.join(ROWS)}")
    workers = [int(w) for w in args.workers.split(",")]
    scale = 4 if args.quick else 1
    repeat = args.repeat or (1 if args.quick else 5)
    image_events = 320 // scale  # 320 × 8.4 MB = 2.7 GB
    raw_messages = 320 // scale
    small_events = 200_000 // scale  # 200 000 × 16 kB = 3.3 GB
    latency_events = 3000 // scale

    print(machine_facts())
    print(f"mode     : {'quick' if args.quick else 'full'}, {repeat} run(s) per row; baseline {raw_messages} × 8 MiB, "
          f"images {image_events} × 8 MiB, small {small_events:,} × 16 kB, latency {latency_events} events")
    print(f"options  : sink hwm {SINK_HWM}, client hwm {CLIENT_HWM}, client verify on; images: bank_size {IMAGE_BANK}, "
          f"events_per_read 1, no batch step; small: batch {args.batch}, events_per_read {args.batch}, "
          f"bank_size {args.batch}; latency: rate_hz 1000, bank_size 16, events_per_read 1")
    print()
    print(f"{'row':<48} {'rate':>14} {'/base':>6}  {'target':<19}")
    print("-" * 100)
    failures = checked = 0
    all_baselines: list[float] = []

    def emit(row: Row) -> None:
        nonlocal failures, checked
        failures += row.passed is False
        checked += row.passed is not None
        print_row(row)

    def images_ok(rate: float, ratio: float) -> bool:
        return ratio >= 0.85

    def small_ok(rate: float, ratio: float) -> bool:
        return rate >= 100_000

    with tempfile.TemporaryDirectory(prefix="beamstream-bench-") as tmp:
        folder = Path(tmp)
        if "baseline" in rows:
            runs = [bench_baseline(folder, raw_messages) for _ in range(repeat)]
            all_baselines += runs
            emit(Row("baseline: raw pyzmq PUSH/PULL 8 MiB", statistics.median(runs), "GB/s", 1.0,
                     note="runs " + ", ".join(f"{r:.2f}" for r in runs)))
        planned = []
        for verify in [True, False] if args.no_verify else [True]:
            if "arrays" in rows:
                planned += [("arrays 8 MiB images", image_spec({"type": "arrays"}, image_events), n, verify,
                             False, "ratio >= 0.85", images_ok) for n in workers]
            if "hdf5" in rows:
                planned += [("hdf5 8 MiB images", image_spec({"type": "hdf5", "compression": "none"}, image_events),
                             n, verify, False, "ratio >= 0.7", lambda rate, ratio: ratio >= 0.7) for n in workers]
            if "shm" in rows:
                planned += [("shm arrays 8 MiB images", image_spec({"type": "arrays"}, image_events), n, verify,
                             False, "ratio >= 2.0", lambda rate, ratio: ratio >= 2.0) for n in workers]
            if "small" in rows:
                planned += [(f"small 16 kB waveforms, batch {args.batch}", small_spec(small_events, args.batch),
                             n, verify, True, ">= 100000 events/s", small_ok) for n in workers]
        for name, spec_for, n, verify, per_event, target, check in planned:
            row, baselines = paired_row(folder, name, spec_for, n, repeat, raw_messages, verify, per_event, target, check)
            all_baselines += baselines
            emit(row)
        if "latency" in rows:
            emit(latency_row(folder, latency_events))
    print("-" * 100)
    if all_baselines:
        print(f"baseline over all {len(all_baselines)} runs: median {statistics.median(all_baselines):.2f} GB/s, "
              f"min {min(all_baselines):.2f}, max {max(all_baselines):.2f}")
    print(f"{failures} of {checked} targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
