"""Where the direct path's time goes: CPU per message on each side, raw pyzmq against beamstream.

    python benchmarks/direct_cpu.py              # 3 rounds, 160 and 480 messages of 8 MiB per run
    python benchmarks/direct_cpu.py --rounds 1

On two cores the direct path (producer process → Client in this process, ipc://) is bound by
CPU, not by the wire: every thread that touches a message — the sender's Python code and its
ZeroMQ I/O thread, the receiver's I/O thread and its Python code — shares the same two cores.
This script measures, for raw pyzmq PUSH/PULL and for beamstream (checksums verified or not; ipc://, and
shm:// where the payloads go through the producer's shared memory),
the CPU seconds each side spends per 8 MiB message, as the difference between a run of 480
and a run of 160 messages (so process start-up and the simulated source drawing its bank
cancel out). The receiving side is this process (``RUSAGE_SELF``: every thread, ZeroMQ's
included); the sending side is the child process (``RUSAGE_CHILDREN``). Minor page faults
per message are counted the same way (2048 means a fresh 8 MiB of memory every message).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from throughput import FRAME_BYTES, bench_baseline, image_spec, run_stream  # noqa: E402

SMALL, LARGE = 160, 480


def usage(who: int) -> tuple[float, int]:
    """(CPU seconds, minor page faults) of ``who`` (RUSAGE_SELF or RUSAGE_CHILDREN) so far."""
    used = resource.getrusage(who)
    return used.ru_utime + used.ru_stime, used.ru_minflt


def measure(run, count: int) -> tuple[float, ...]:
    """(wall s, receiver CPU s, sender CPU s, receiver faults, sender faults) of one run of ``count`` messages."""
    receiver, sender, wall = usage(resource.RUSAGE_SELF), usage(resource.RUSAGE_CHILDREN), time.perf_counter()
    run(count)
    wall = time.perf_counter() - wall
    receiver_after, sender_after = usage(resource.RUSAGE_SELF), usage(resource.RUSAGE_CHILDREN)
    return (wall, receiver_after[0] - receiver[0], sender_after[0] - sender[0],
            receiver_after[1] - receiver[1], sender_after[1] - sender[1])


def per_message(run, rounds: int) -> tuple[float, ...]:
    """Median over ``rounds`` of each figure of :func:`measure` per message (times in ms), from LARGE − SMALL runs."""
    samples = []
    for _ in range(rounds):
        small, large = measure(run, SMALL), measure(run, LARGE)
        samples.append([(b - a) / (LARGE - SMALL) * (1e3 if i < 3 else 1)
                        for i, (a, b) in enumerate(zip(small, large, strict=True))])
    return tuple(statistics.median(column) for column in zip(*samples, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="beamstream-cpu-") as folder_name:
        folder = Path(folder_name)
        rows = {
            "raw pyzmq PUSH/PULL": lambda n: bench_baseline(folder, n),
            "beamstream arrays, verify on": lambda n: run_stream(folder, "on", image_spec({"type": "arrays"}, n), 1),
            "beamstream arrays, verify off": lambda n: run_stream(folder, "off", image_spec({"type": "arrays"}, n), 1,
                                                                  verify=False),
            "beamstream arrays over shm://": lambda n: run_stream(folder, "shm", image_spec({"type": "arrays"}, n), 1),
            "beamstream shm://, verify off": lambda n: run_stream(folder, "shm", image_spec({"type": "arrays"}, n), 1,
                                                                  verify=False),
        }
        print(f"per 8 MiB message ({FRAME_BYTES / 1e6:.1f} MB), marginal between {SMALL} and {LARGE} messages, "
              f"median of {args.rounds} round(s)")
        print(f"{'row':34} {'wall ms':>8} {'GB/s':>6} {'receiver CPU ms':>16} {'sender CPU ms':>14} "
              f"{'total CPU ms':>13} {'receiver faults':>16} {'sender faults':>14}")
        for name, run in rows.items():
            wall, receiver, sender, receiver_faults, sender_faults = per_message(run, args.rounds)
            print(f"{name:34} {wall:8.2f} {FRAME_BYTES / wall / 1e6:6.2f} {receiver:16.2f} {sender:14.2f} "
                  f"{receiver + sender:13.2f} {receiver_faults:16.0f} {sender_faults:14.0f}")


if __name__ == "__main__":
    main()
