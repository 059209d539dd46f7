"""Does a `beamstream tof` group keep up with a stream of digitizer waveforms? Real processes, real buffer.

    .venv/bin/python benchmarks/tof_stream.py                        # 2,000,000 waveforms, 2 members: ~40 s
    .venv/bin/python benchmarks/tof_stream.py --events 500000 --members 1 --rate 100000

The reduction runs where it is cheapest, in the producers, before the wire: each producer worker
reads 8192-sample int16 waveforms from the simulated source (a bank of ``--bank`` events, replayed),
runs the ``cfd`` step on batches of ``--batch`` (256) and drops the waveforms with a ``select``
step, so the wire carries hit lists (68 bytes an event instead of 16 kB). A ``beamstream buffer`` process stands
between them and a ``beamstream tof`` group of ``--members`` processes, which histogram the hits.

Every 0.25 s the benchmark reads the buffer's metrics (``events_in_total``, and the group's
``group_lag``: messages the buffer took in that the group has not acknowledged yet, i.e. what it holds
for the group) and each process's CPU time. Printed:

- the producers' waveforms/s: events the buffer took in, from its first to its last data message;
- the group's waveforms/s: the same events, from the first one in to the moment the group had
  acknowledged them all (the lag back to 0 after the producers ended; to within 0.25 s);
- the group's lag at the start, middle and end of the producers' run, its median and its largest, in
  messages, events and bytes: flat if in the last third of the run it came back down to what the
  members may hold unacknowledged (4 messages each), growing if not;
- the buffer's resident bytes at the end (which grow by design: it keeps acknowledged messages for
  groups that join late while ``--max-memory`` allows; the lag is what it holds for this group);
- how long after the last event the members exited: their last snapshots (which hold every event's
  hits) written and merged;
- CPU seconds and cores used by the producers, the buffer and the members;
- whether every event was counted: the merged snapshot holds each seq once, its ``hits_found`` is
  the sum of the cfd hit counts of the events sent (the bank's counts, replayed) and its histogram
  holds every kept hit: verdict complete, or what is missing.

``--send-waveforms`` sends the waveforms along with the hits (what running ``cfd`` after the wire
would have to receive), for comparison. Without ``--rate`` the producers run as fast as they can
(the group must then keep up with their best); with ``--rate`` the simulated source paces them
(``rate_hz``), which holds back events one by one and costs the producers more than ``cfd`` does.
Recipe and figures: docs/tof.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from beamstream.apps.tof import TofSnapshot  # noqa: E402
from beamstream.batch import Batch  # noqa: E402
from beamstream.metrics_reading import fetch_status  # noqa: E402
from beamstream.producer import run_local  # noqa: E402
from beamstream.spec import parse_spec  # noqa: E402

BEAMSTREAM = [sys.executable, "-m", "beamstream.cli"]
CFD = {"type": "cfd", "field": "tof", "threshold": 10.0, "delay": 3, "fraction": 0.5}
HITS = ["tof_cfd", "tof_cfd_count"]
EVERY_S = 0.25
CREDIT = 4  # messages a member's client asks for at a time (its hwm), and so may hold unacknowledged


def stream_spec(endpoint: str, args: argparse.Namespace) -> object:
    """Simulated waveforms → cfd → only the hits, to ``endpoint``."""
    return parse_spec({
        "source": {"type": "simulated", "n_events": args.events, "bank_size": args.bank or args.batch,
                   "events_per_read": args.batch, "rate_hz": args.rate,
                   "detectors": [{"kind": "waveform", "name": "tof", "samples": args.samples, "dtype": args.dtype,
                                  "hits": 5}]},
        "steps": [{"type": "batch", "size": args.batch}, CFD,
                  {"type": "select", "fields": HITS + ["tof"] * args.send_waveforms}],
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    })


@dataclass
class Sample:
    """One reading of the buffer's metrics and the processes' CPU seconds."""

    at: float
    events_in: float
    messages_in: float
    bytes_in: float
    resident: float
    lag: float
    ended: float
    cpu: dict[str, float] = field(default_factory=dict)


def cpu_seconds(seen: dict[int, tuple[str, float]]) -> dict[str, float]:
    """User + system CPU seconds of this process's descendants, summed by role (see :func:`role_of`); ``seen``
    keeps each one's role and last reading, so that one that has exited still counts (up to EVERY_S short)."""
    for child in psutil.Process().children(recursive=True):
        try:
            role = seen[child.pid][0] if child.pid in seen else role_of(child)
            times = child.cpu_times()
        except psutil.Error:
            continue
        seen[child.pid] = role, times.user + times.system
    totals: dict[str, float] = {}
    for role, seconds in seen.values():
        totals[role] = totals.get(role, 0.0) + seconds
    return totals


def role_of(process: psutil.Process) -> str:
    line = " ".join(process.cmdline())
    return "buffer" if " buffer " in line else "members" if " tof " in line else "producers"


def watch(url: str, done: threading.Event, samples: list[Sample]) -> None:
    """Append a :class:`Sample` every EVERY_S seconds until ``done``."""
    seen: dict[int, tuple[str, float]] = {}
    while not done.wait(EVERY_S):
        status = fetch_status(url)
        totals = status.totals
        samples.append(Sample(time.monotonic(), totals["events_in_total"], totals["messages_in_total"],
                              totals["bytes_in_total"], totals["resident_bytes"],
                              status.groups.get("tof", {}).get("group_lag", 0.0), totals["producers_ended"],
                              cpu_seconds(seen)))


def start_buffer(folder: Path) -> tuple[subprocess.Popen, str]:
    """A ``beamstream buffer`` process on ipc:// endpoints in ``folder``, and its metrics URL."""
    buffer = subprocess.Popen([*BEAMSTREAM, "buffer", "--producer-endpoint", f"ipc://{folder}/in",
                               "--consumer-endpoint", f"ipc://{folder}/out", "--max-memory", "1GiB",
                               "--metrics-port", "0"], stderr=subprocess.PIPE, text=True)
    lines = []
    while line := buffer.stderr.readline():
        if found := re.search(r"metrics → (\S+)", line):
            threading.Thread(target=buffer.stderr.read, daemon=True).start()  # drain: it must never block
            return buffer, found.group(1)
        lines.append(line)
    raise SystemExit(f"the buffer exited (code {buffer.wait()}) without serving:\n{''.join(lines)}")


def expected_counts(spec: object, events: int) -> np.ndarray:
    """The cfd hit count of every event 0..events-1: the bank's, replayed."""
    bank = spec.source.open().bank()["tof"]
    batch = Batch(np.arange(len(bank)), np.zeros(len(bank)), {"tof": bank})
    return spec.steps[1].build().apply(batch).data["tof_cfd_count"][np.arange(events) % len(bank)]


def verdict(out: Path, expected: np.ndarray) -> str:
    """``complete`` if the merged snapshot counted every event and hit once, else what is wrong."""
    snapshot = TofSnapshot.read(out)
    totals, seq = snapshot.totals, snapshot.seq[0]
    problems = []
    if not np.array_equal(seq, np.arange(len(expected))):
        problems.append(f"{len(np.unique(seq)):,} distinct events of {len(expected):,} ({len(seq):,} rows)")
    if totals["hits_found"] != expected.sum():
        problems.append(f"hits_found {totals['hits_found']:,}, sent {int(expected.sum()):,}")
    if snapshot.counts.sum() + totals["hits_outside"] != totals["hits_kept"]:
        problems.append("the histogram does not hold every kept hit")
    summary = (f"{totals['events']:,} events, {totals['hits_found']:,} hits found (sent: {int(expected.sum()):,}), "
               f"{int(snapshot.counts.sum()):,} in the histogram, {snapshot.members} member snapshots")
    return f"{summary}\nverdict: {'complete' if not problems else 'INCOMPLETE: ' + '; '.join(problems)}"


def run(args: argparse.Namespace, folder: Path) -> None:
    buffer, url = start_buffer(folder)
    out = folder / "tof.h5"
    members = [subprocess.Popen([*BEAMSTREAM, "tof", f"ipc://{folder}/out", "--group", "tof", "--field", "tof",
                                 "--out", str(out), "--every", str(args.every), "--timeout", "120"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(args.members)]
    samples: list[Sample] = []
    done = threading.Event()
    try:
        deadline = time.monotonic() + 60
        while fetch_status(url).groups.get("tof", {}).get("group_members", 0) < args.members:
            if time.monotonic() > deadline or any(member.poll() is not None for member in members):
                raise SystemExit("the tof members did not all join the group within 60 s")
            time.sleep(0.05)
        spec = stream_spec(f"ipc://{folder}/in", args)
        watcher = threading.Thread(target=watch, args=(url, done, samples))
        watcher.start()
        result = run_local(spec, args.workers)
        if not result.ok:
            raise SystemExit(f"the producers failed: {result.errors}")
        outputs = [member.communicate(timeout=600)[0] for member in members]
        finished = time.monotonic()
        done.set()
        watcher.join()
    finally:
        done.set()
        for member in members:
            member.kill()
        buffer.terminate()
        buffer.wait(30)
    codes = [member.returncode for member in members]
    if any(codes):
        raise SystemExit(f"the tof members exited {codes}:\n" + "\n".join(outputs))
    report(args, samples, finished)
    print(verdict(out, expected_counts(spec, args.events)))


def report(args: argparse.Namespace, samples: list[Sample], finished: float) -> None:
    """Print the rates, the group's lag over the run and the CPU each part used (see the module's docstring)."""
    first = next(sample for sample in samples if sample.events_in > 0)
    last_in = next(sample for sample in samples if sample.events_in == args.events)
    caught_up = next(sample for sample in samples if sample.ended == args.workers and sample.lag == 0)
    running = [sample for sample in samples if first.at <= sample.at <= last_in.at]
    per_message = last_in.events_in / last_in.messages_in, last_in.bytes_in / last_in.messages_in
    produced = (last_in.events_in - first.events_in) / (last_in.at - first.at)
    consumed = (last_in.events_in - first.events_in) / (caught_up.at - first.at)
    lags = [sample.lag for sample in running]
    allowed = args.members * CREDIT
    flat = min(lags[len(lags) * 2 // 3:]) <= allowed
    seconds = caught_up.at - first.at
    cpu = {role: caught_up.cpu.get(role, 0.0) - first.cpu.get(role, 0.0) for role in ("producers", "buffer", "members")}
    pace = f"paced at {args.rate:,.0f}/s" if args.rate else "unpaced"
    sent = "hits and waveforms" if args.send_waveforms else "hits only"
    print(f"{args.events:,} waveforms of {args.samples} {args.dtype} samples; {args.workers} producer(s), {pace}, "
          f"cfd in the producers, {sent} sent; {args.members} tof member(s); {per_message[0]:.0f} events "
          f"({per_message[1] / 1e3:.1f} kB) a message")
    print(f"producers    {produced:>9,.0f} waveforms/s  (the buffer took them in over {last_in.at - first.at:.1f} s)")
    print(f"tof group    {consumed:>9,.0f} waveforms/s  (all acknowledged {caught_up.at - last_in.at:.2f} s after the "
          f"last came in, to within {EVERY_S} s)")
    print(f"group lag    start {lags[0]:,.0f}, middle {lags[len(lags) // 2]:,.0f}, end {lags[-1]:,.0f}, median "
          f"{statistics.median(lags):,.0f}, largest {max(lags):,.0f} messages ({max(lags) * per_message[0]:,.0f} "
          f"events, {max(lags) * per_message[1] / 1e6:.1f} MB); members may hold {allowed}: "
          + ("flat (back to that in the last third of the run)" if flat else "GROWING (not back to that in the last "
                                                                           "third of the run)"))
    print(f"buffer       {last_in.resident / 1e6:.0f} MB resident at the end (it keeps acknowledged messages for "
          "late groups while --max-memory allows)")
    print(f"members      exited {finished - last_in.at:.1f} s after the last event came in, their last snapshots "
          "and merges written")
    print("CPU          " + ", ".join(f"{role} {used:.1f} s ({used / seconds:.2f} cores)" for role, used in cpu.items())
          + f" over {seconds:.1f} s; load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000, help="waveforms in the run")
    parser.add_argument("--rate", type=float, default=None, help="pace the source at this many waveforms/s")
    parser.add_argument("--workers", type=int, default=1, help="producer worker processes")
    parser.add_argument("--members", type=int, default=2, help="beamstream tof processes in the group")
    parser.add_argument("--samples", type=int, default=8192, help="samples per waveform")
    parser.add_argument("--dtype", default="int16", help="sample type")
    parser.add_argument("--batch", type=int, default=256, help="events a message (and a cfd call)")
    parser.add_argument("--bank", type=int, default=None, help="distinct waveforms the source replays (default: "
                                                               "--batch, so that each batch is a view of the bank)")
    parser.add_argument("--send-waveforms", action="store_true", help="send the waveforms too (the members "
                                                                      "still histogram only the hits)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between the members' snapshots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="beamstream-tof-stream-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
