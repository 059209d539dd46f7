"""The Karabo bridge's and the karabo sink's throughput, against Karabo's own simulated bridge server, in one run.

    .venv/bin/python benchmarks/karabo_bridge.py [--detector AGIPDModule|AGIPD] [--trains N] [--repeat N]
                                                 [--scheme ipc|shm]

Each is read by ``karabo_bridge.Client(..., sock="REQ")`` in this process, over tcp on loopback:
  baseline  ``karabo-bridge-server-sim PORT -z REP -d DETECTOR -g zeros`` (its own process; AGIPDModule also -r):
            each request answered with a freshly generated train. ``-g zeros`` is its cheapest generator, and
            real memory: after the first trains its arrays come from reused heap that calloc clears (perf: a
            memset is a fifth of its CPU, the tcp send's copy a third; 2–9 minor faults per 16.8 MB train, where
            fresh zero pages fault about 1000 times), so the kernel copies ordinary pages, not the zero page.
  bridge    a simulated beamstream stream whose events carry the same arrays as the simulator's trains (same
            keys, shapes and dtypes; 1-D arrays as waveforms, the others as images, no peaks or hits): producer
            (run_local, its own process) → ipc:// or shm:// → ``beamstream bridge karabo --listen`` (its own
            process; over shm:// it reads copies, as it must: docs/karabo-bridge.md, "Speed").
  sink      the same simulated source, its producer (run_local, its own process) serving the trains itself
            through the ``karabo`` sink: no stream between, no second process.
A rate counts the array bytes of the trains received from the first train after ``--warmup`` to the last.
Every train id must arrive once (beamstream's: 0 … warmup+trains-1; the simulator's: consecutive), or the
run fails. Each round (baseline, bridge, sink) gives a ratio for each; each median ratio's target is ≥ 1.0.

Each pair also prints the CPU time (user + system, all threads) each process spent per timed train, against
what the machine's cores offer per train at the rate reached: the REQ round trip leaves the baseline's cores
partly idle, while the bridge's chain (one process more, which reads, checks the checksum of and re-sends every
byte) is bound by CPU where cores are few. The producer's share is what a stream costs its source's node; in
production that is not the bridge's node.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

if Path(sys.path[0]).resolve() == Path(__file__).parent.resolve():  # this file would hide the karabo_bridge package
    sys.path.pop(0)

BEAMSTREAM = [sys.executable, "-m", "beamstream.cli"]
SIMULATOR = str(Path(sys.executable).parent / "karabo-bridge-server-sim")
TARGET = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def simulated_arrays(detector: str) -> dict[str, np.ndarray]:
    """One train's arrays as the simulator sends them (key → array), from its own generator."""
    from karabo_bridge.simulation import Detector

    data, _ = Detector.getDetector(detector, raw=detector == "AGIPDModule", gen="zeros").gen_data(0)
    return {key: value for key, value in next(iter(data.values())).items() if isinstance(value, np.ndarray)}


def stream_spec(endpoint: str, arrays: dict[str, np.ndarray], events: int, sink: str = "stream") -> object:
    """A simulated stream of ``events`` events with ``arrays``' keys (dots as underscores), shapes and dtypes, sent
    to ``endpoint`` by a ``sink`` sink (``stream``, or ``karabo``: served there as Karabo bridge trains)."""
    from beamstream.spec import parse_spec

    detectors = [{"kind": "image", "name": key.replace(".", "_"), "shape": list(array.shape),
                  "dtype": str(array.dtype), "peaks": 0} if array.ndim > 1 else
                 {"kind": "waveform", "name": key.replace(".", "_"), "samples": array.shape[0],
                  "dtype": str(array.dtype), "hits": 0}
                 for key, array in arrays.items()]
    return parse_spec({"source": {"type": "simulated", "n_events": events, "bank_size": 1, "events_per_read": 1,
                                  "detectors": detectors},
                       "sinks": [{"type": sink, "endpoint": endpoint}]})


def cpu_seconds() -> dict[int, float]:
    """CPU time (user + system, all threads) so far of this process and of each process it started, by pid."""
    this = psutil.Process()
    seconds = {}
    for process in (this, *this.children(recursive=True)):
        with contextlib.suppress(psutil.Error):  # one that has just ended
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def cpu_per_train(before: dict[int, float], trains: int, roles: dict[int, str]) -> dict[str, float]:
    """Milliseconds of CPU per train since ``before``, by role: ``roles`` names pids, any other is the producer."""
    spent: dict[str, float] = {}
    for pid, seconds in cpu_seconds().items():
        role = roles.get(pid, "producer")
        spent[role] = spent.get(role, 0.0) + (seconds - before.get(pid, 0.0)) * 1e3 / trains
    return spent


def read(address: str, warmup: int, trains: int, roles: dict[int, str]) -> tuple[float, float, list[int], dict]:
    """GB/s and trains/s of ``trains`` trains read after ``warmup``, the ids of all of them, and the CPU each
    process spent per train meanwhile (:func:`cpu_per_train`; this process, the reader, is ``client``)."""
    import karabo_bridge

    ids, received, first, before = [], 0, None, {}
    with karabo_bridge.Client(address, sock="REQ", timeout=120) as client:
        for number in range(warmup + trains):
            data, metadata = client.next()
            ids.append(next(iter(metadata.values()))["timestamp.tid"])
            if number == warmup:
                before, first = cpu_seconds(), time.perf_counter()
            elif number > warmup:
                received += sum(value.nbytes for keys in data.values() for value in keys.values()
                                if isinstance(value, np.ndarray))
    seconds = time.perf_counter() - first
    cpu = cpu_per_train(before, trains - 1, {os.getpid(): "client", **roles})
    return received / seconds / 1e9, (trains - 1) / seconds, ids, cpu


def baseline(detector: str, warmup: int, trains: int) -> tuple[float, float, dict]:
    port = free_port()
    raw = ["-r"] if detector == "AGIPDModule" else []
    server = subprocess.Popen([SIMULATOR, str(port), "-z", "REP", "-d", detector, "-g", "zeros", *raw],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gbs, rate, ids, cpu = read(f"tcp://127.0.0.1:{port}", warmup, trains, {server.pid: "simulator"})
    finally:
        server.terminate()
        server.wait(30)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise SystemExit(f"the simulator's train ids are not consecutive: {ids[:5]} …")
    return gbs, rate, cpu


def bridge(folder: Path, run: int, arrays: dict[str, np.ndarray], warmup: int, trains: int,
           scheme: str = "ipc") -> tuple[float, float, dict]:
    from beamstream.producer import run_local

    endpoint, port = f"{scheme}://{folder}/stream-{run}", free_port()
    server = subprocess.Popen([*BEAMSTREAM, "bridge", "karabo", endpoint, "--listen", "--timeout", "120",
                               "--bind", f"tcp://127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        while "karabo bridge: serving" not in (line := server.stderr.readline()):
            if not line:
                raise SystemExit(f"the bridge exited ({server.wait()}) before serving")
        outcome: dict = {}
        producer = threading.Thread(target=lambda: outcome.setdefault(
            "run", run_local(stream_spec(endpoint, arrays, warmup + trains), 1, poll_interval=2.0)), daemon=True)
        producer.start()
        gbs, rate, ids, cpu = read(f"tcp://127.0.0.1:{port}", warmup, trains, {server.pid: "bridge"})
        producer.join(120)
        _, stderr = server.communicate(timeout=120)
    finally:
        server.kill()
    if sorted(ids) != list(range(warmup + trains)) or server.returncode != 0 or not outcome["run"].ok:
        raise SystemExit(f"the bridge lost trains or failed (exit {server.returncode}):\n{stderr}")
    return gbs, rate, cpu


def sink(arrays: dict[str, np.ndarray], warmup: int, trains: int) -> tuple[float, float, dict]:
    from beamstream.producer import run_local

    port = free_port()
    spec = stream_spec(f"tcp://127.0.0.1:{port}", arrays, warmup + trains, sink="karabo")
    outcome: dict = {}
    producer = threading.Thread(target=lambda: outcome.setdefault("run", run_local(spec, 1, poll_interval=2.0)),
                                daemon=True)
    producer.start()
    gbs, rate, ids, cpu = read(f"tcp://127.0.0.1:{port}", warmup, trains, {})
    producer.join(120)
    if sorted(ids) != list(range(warmup + trains)) or not outcome["run"].ok:
        raise SystemExit(f"the karabo sink lost trains or failed: {outcome.get('run')}")
    return gbs, rate, cpu


def cpu_text(cpu: dict[str, float]) -> str:
    """Each role's milliseconds (none for a process that spent nothing, e.g. a previous run's leftover) and the sum."""
    spent = " + ".join(f"{role} {cpu[role]:.1f}" for role in sorted(cpu) if cpu[role] >= 0.05)
    return f"{spent} = {sum(cpu.values()):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=["AGIPDModule", "AGIPD"], default="AGIPDModule",
                        help="the simulator's detector: AGIPDModule (raw, 16.8 MB trains; default) or AGIPD "
                             "(corrected, 277 MB trains)")
    parser.add_argument("--trains", type=int, default=None, help="trains timed per run (default: 200 AGIPDModule, "
                                                                 "20 AGIPD)")
    parser.add_argument("--warmup", type=int, default=3, help="trains read before timing starts (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of runs (default 3)")
    parser.add_argument("--scheme", choices=("ipc", "shm"), default="ipc",
                        help="the stream from producer to bridge: ipc (default) or shm (payloads in shared memory)")
    args = parser.parse_args()
    trains = args.trains or (200 if args.detector == "AGIPDModule" else 20)
    arrays = simulated_arrays(args.detector)
    size = sum(array.nbytes for array in arrays.values())
    print(f"{args.detector}: {len(arrays)} arrays, {size / 1e6:.1f} MB per train; {trains} trains timed per run "
          f"after {args.warmup}; {args.repeat} round(s) of runs; karabo_bridge.Client(sock='REQ'), tcp loopback; "
          f"producer → bridge over {args.scheme}://")
    rounds: list[dict[str, tuple[float, float, dict]]] = []
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="beamstream-karabo-bench-") as tmp:
        for run in range(args.repeat):
            rounds.append({"simulator": baseline(args.detector, args.warmup, trains),
                           "bridge": bridge(Path(tmp), run, arrays, args.warmup, trains, args.scheme),
                           "sink": sink(arrays, args.warmup, trains)})
            base_gbs = rounds[-1]["simulator"][0]
            print(f"round {run + 1}:")
            for path, (gbs, rate, cpu) in rounds[-1].items():
                ratio = "" if path == "simulator" else f"ratio {gbs / base_gbs:4.2f}x"
                print(f"  {path:<9} {gbs:5.2f} GB/s {rate:7.1f} trains/s  {ratio:<12} CPU ms/train: {cpu_text(cpu)} "
                      f"(of {cores * 1e3 / rate:.1f} on {cores} cores)")
    names = {"simulator": "simulator (karabo-bridge-server-sim)", "bridge": "beamstream bridge karabo",
             "sink": "producers with the karabo sink"}
    for path, name in names.items():
        print(f"{name:<37} {statistics.median(r[path][0] for r in rounds):5.2f} GB/s "
              f"{statistics.median(r[path][1] for r in rounds):7.1f} trains/s"
              f"{'' if path == 'simulator' else '   every train id once'}")
    for path in ("bridge", "sink"):
        ratios = [r[path][0] / r["simulator"][0] for r in rounds]
        ratio = statistics.median(ratios)
        print(f"ratio {path}/simulator{'':<{15 - len(path)}} {ratio:5.2f}x   target >= {TARGET}  "
              f"{'PASS' if ratio >= TARGET else 'FAIL'}  (runs {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
