"""Throughput through the buffer, against raw ZeroMQ measured in the same run.

    .venv/bin/python benchmarks/buffer.py [--quick] [--repeat N]

Rows, each a median of ``--repeat`` runs paired with a raw baseline run just before it:
  baseline   raw pyzmq PUSH/PULL, 8 MiB messages (as in throughput.py)
  1 group    simulated 8 MiB images: producer → `beamstream buffer` → one consumer. Target ≥ 0.8× (issue 24).
  2 groups   the same with a second group read by `beamstream consume` in its own process;
             the rate is the slower of the two groups. Target ≥ 0.6× (a second group must not halve the rate).
  NATS       the same as 1 group with `beamstream buffer --backend nats://127.0.0.1:4222/NAME`:
             the stream goes into JetStream (file storage) and the consumer reads it from there.
             Skipped when no NATS server listens there.
  shm        the 1- and 2-group rows over shm:// endpoints: the producer writes each payload once into its
             shared memory, the buffer and the groups read views of it (docs/wire-format.md, "Shared
             memory"). Target for 1 group: ≥ 2.0× (issue 24: one write by the source, one read by the consumer).
The buffer runs as `beamstream buffer` in its own process; everything else uses ipc:// endpoints (shm:// rows:
shm:// there).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from throughput import bench_baseline, image_spec  # noqa: E402
from timing import timed_run  # noqa: E402

from beamstream.jetstream.urls import listening  # noqa: E402

BEAMSTREAM = [sys.executable, "-m", "beamstream.cli"]


NATS = "nats://127.0.0.1:4222"


def through_buffer(folder: Path, run: int, images: int, groups: int, nats: bool = False, scheme: str = "ipc") -> float:
    """GB/s of ``images`` 8 MiB messages through a buffer process to ``groups`` consumer groups (the slowest), over
    ``scheme`` (ipc or shm) endpoints."""
    from beamstream.client import Client

    producers, consumers = f"{scheme}://{folder}/in-{run}", f"{scheme}://{folder}/out-{run}"
    if nats:
        consumers = f"{NATS}/bench-{uuid.uuid4().hex[:8]}"
    where = ["--backend" if nats else "--consumer-endpoint", consumers]
    buffer = subprocess.Popen([*BEAMSTREAM, "buffer", "--producer-endpoint", producers, *where, "--max-memory", "512MiB"],
                              stderr=subprocess.DEVNULL)
    others = [subprocess.Popen([*BEAMSTREAM, "consume", consumers, "--group", f"g{number}", "--timeout", "120"],
                               stderr=subprocess.PIPE, text=True) for number in range(1, groups)]
    try:
        with Client(consumers, group="g0", timeout=120) as client:
            spec = image_spec({"type": "arrays"}, images)(producers)
            rate = timed_run(client, spec, 1, name="through the buffer").gb_per_s
        for other in others:
            _, err = other.communicate(timeout=120)
            rate = min(rate, _rate_from_consume(err, rate))
        return rate
    finally:
        buffer.terminate()
        buffer.wait(30)
        for other in others:
            other.kill()
        if nats:
            delete_nats_stream(consumers)


def delete_nats_stream(url: str) -> None:
    from beamstream.jetstream.store import NatsStore
    from beamstream.jetstream.urls import split_url

    stream = split_url(url)
    with NatsStore(stream.server, stream.name) as store:
        store.delete()


def _rate_from_consume(stderr: str, fallback: float) -> float:
    """The MB/s `beamstream consume` logs last, in GB/s (the fallback if it logged none)."""
    rates = [float(part.split()[0].replace(",", "")) / 1000 for line in stderr.splitlines()
             for part in line.split(", ") if part.endswith("MB/s")]
    return rates[-1] if rates else fallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a quarter of the data, one run per row")
    parser.add_argument("--repeat", type=int, default=None, help="runs per row (default 5, 1 with --quick)")
    args = parser.parse_args()
    images = 80 if args.quick else 320
    repeat = args.repeat or (1 if args.quick else 5)
    print(f"{images} × 8 MiB per run, {repeat} run(s) per row, ipc://, buffer --max-memory 512MiB")
    with tempfile.TemporaryDirectory(prefix="beamstream-buffer-bench-") as tmp:
        folder = Path(tmp)
        rows = [(1, 0.8, False, "ipc"), (2, 0.6, False, "ipc")] + \
            ([(1, None, True, "ipc")] if listening(NATS) else []) + [(1, 2.0, False, "shm"), (2, None, False, "shm")]
        for groups, target, nats, scheme in rows:
            rates, ratios, baselines = [], [], []
            for run in range(repeat):
                baselines.append(bench_baseline(folder, images))
                rates.append(through_buffer(folder, run + 10 * groups + 100 * nats + 1000 * (scheme == "shm"), images,
                                            groups, nats, scheme))
                ratios.append(rates[-1] / baselines[-1])
            ratio = statistics.median(ratios)
            verdict = "" if target is None else ("PASS" if ratio >= target else "FAIL")
            label = f"producer → buffer → {groups} group{'s' * (groups > 1)}" + (" (NATS)" if nats else "") \
                + (" over shm://" if scheme == "shm" else "")
            goal = f"ratio ≥ {target}" if target else ""
            print(f"{label:<50} {statistics.median(rates):6.2f} GB/s  {ratio:5.2f}×  {goal:<12} {verdict:<4} "
                  f"(runs {', '.join(f'{r:.2f}' for r in rates)}; baselines {', '.join(f'{b:.2f}' for b in baselines)})")


if __name__ == "__main__":
    main()
