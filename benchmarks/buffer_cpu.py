"""Where the buffer's time goes: CPU per message of every thread, producer → buffer → 1 and 2 groups, against raw pyzmq.

    .venv/bin/python benchmarks/buffer_cpu.py              # 3 rounds of 160 and 480 messages of 8 MiB per row
    .venv/bin/python benchmarks/buffer_cpu.py --rounds 1 --rows "1 group"

The rows run what ``buffer.py`` runs (its :func:`~buffer.through_buffer`: a producer process, ``beamstream
buffer`` in its own process, a ``Client(group=…)`` in this process and, for 2 groups, ``beamstream consume`` in
another), raw pyzmq PUSH/PULL (``throughput.bench_baseline``) and the direct path (the same producer straight into
a ``Client``: ``throughput.run_stream``), which show what the buffer adds. While a row runs, a sampler thread reads
the CPU time (``/proc/PID/task/TID/schedstat``, nanoseconds) and minor page faults (``.../stat``) of every thread
of this process and of every process below it, every 50 ms; a thread's figures are cumulative, so the last reading
of a process that has exited is its total but for at most 50 ms. Each thread is named by its process (producer,
buffer, client: this process, consume) and its role there (``main``: the Python loop; ``zmq I/O N``: a ZeroMQ
I/O thread). As in ``direct_cpu.py``, a figure is the difference between a run of 480 and one of 160 messages,
per message, so start-up and the source drawing its bank cancel out; this process's own total is also taken from
``getrusage`` (threads that ended between readings included), as a check on the sum of its threads. On a shared
machine the CPU figures hold better than the wall time: compare rows run together, and mind the load printed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from buffer import through_buffer  # noqa: E402
from direct_cpu import LARGE, SMALL, usage  # noqa: E402
from throughput import FRAME_BYTES, bench_baseline, image_spec, run_stream  # noqa: E402

SAMPLE_S = 0.05  # how often the sampler reads the threads' counters
FIND_EVERY = 5  # samples between two walks of /proc for new processes
Thread = tuple[str, str]  # (process, thread role)


def _stat_fields(path: str) -> list[str]:
    """The fields of a /proc ``stat`` file after the command name (which may hold spaces): field 3 onwards."""
    with open(path) as stat:
        return stat.read().rsplit(")", 1)[1].split()


def _process_of(pid: int, root: int) -> str:
    """What process ``pid`` is in a row: this one (the client), the buffer, a ``consume``, a producer."""
    if pid == root:
        return "client (this process)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")
    except OSError:
        return "other"
    if b"beamstream.cli" in words:
        return "buffer" if b"buffer" in words else "consume (group 2)" if b"consume" in words else "other"
    if any(b"resource_tracker" in word for word in words):
        return "other"
    return "producer" if any(b"spawn_main" in word for word in words) else "other"


def _role_of(pid: int, tid: int) -> str:
    """A thread's role in its process: ``main`` (its Python loop) or what ZeroMQ named it."""
    if tid == pid:
        return "main"
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as comm:
            name = comm.read().strip()
    except OSError:
        return "other"
    if name.startswith("ZMQbg/IO/"):
        return f"zmq I/O {name.rsplit('/', 1)[1]}"
    return "zmq reaper" if name.startswith("ZMQbg/Reaper") else "other threads"


class ThreadClock:
    """CPU seconds and minor page faults of every thread of this process and its descendants, while running.

    ``with ThreadClock() as clock: run()`` then ``clock.totals()``: {(process, role): (CPU s, faults)} over the
    run (this process's threads counted from when the clock started; the sampler's own thread left out).
    """

    def __init__(self) -> None:
        self.root = os.getpid()
        self.last: dict[tuple[int, int], tuple[Thread, int, int]] = {}  # (pid, tid) → (thread, CPU ns, faults)
        self.names: dict[int, str] = {}  # pid → what process it is (:func:`_process_of`)
        self.start: dict[tuple[int, int], tuple[int, int]] = {}
        self.stopping = threading.Event()
        self.own: int | None = None  # the sampler's thread id, once it runs: not counted
        self.sampler = threading.Thread(target=self._run, name="buffer-cpu-sampler", daemon=True)

    def __enter__(self) -> ThreadClock:
        self._find()
        self._read()
        self.start = {key: (ns, faults) for key, (_, ns, faults) in self.last.items()}
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.sampler.join()
        self._read()

    def _run(self) -> None:
        self.own = threading.get_native_id()
        for count in itertools.count():
            if self.stopping.wait(SAMPLE_S):
                return
            if count % FIND_EVERY == 0:
                self._find()
            self._read()

    def _find(self) -> None:
        """Add the processes below this one that appeared since the last walk."""
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    parents[int(entry)] = int(_stat_fields(f"/proc/{entry}/stat")[1])
                except (OSError, IndexError):
                    continue
        mine = {self.root}
        grew = True
        while grew:
            below = {pid for pid, parent in parents.items() if parent in mine}
            grew = not below <= mine
            mine |= below
        for pid in mine - self.names.keys():
            self.names[pid] = _process_of(pid, self.root)

    def _read(self) -> None:
        for pid, process in list(self.names.items()):
            try:
                tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                continue  # exited: its last reading stays
            for tid in tids:
                if tid == self.own:
                    continue
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as schedstat:
                        ns = int(schedstat.read().split()[0])
                    faults = int(_stat_fields(f"/proc/{pid}/task/{tid}/stat")[7])
                except (OSError, IndexError, ValueError):
                    continue
                known = self.last.get((pid, tid))  # ZeroMQ names its threads once they run: ask until named
                thread = known[0] if known and known[0][1] != "other threads" else (process, _role_of(pid, tid))
                self.last[(pid, tid)] = (thread, ns, faults)

    def totals(self) -> dict[Thread, tuple[float, int]]:
        """{(process, role): (CPU seconds, minor page faults)} since the clock started, summed over threads."""
        sums: dict[Thread, list[float]] = defaultdict(lambda: [0.0, 0])
        for key, (thread, ns, faults) in self.last.items():
            ns0, faults0 = self.start.get(key, (0, 0))
            sums[thread][0] += (ns - ns0) / 1e9
            sums[thread][1] += faults - faults0
        return {thread: (cpu, int(faults)) for thread, (cpu, faults) in sums.items()}


def measure(run: Callable[[int], float], count: int) -> tuple[float, float, float, dict[Thread, tuple[float, int]]]:
    """(wall seconds, GB/s from the first message received to the last, this process's CPU seconds by getrusage,
    per-thread totals) of one run of ``count`` messages; ``run(count)`` returns the GB/s."""
    before, wall = usage(resource.RUSAGE_SELF)[0], time.perf_counter()
    with ThreadClock() as clock:
        rate = run(count)
    return time.perf_counter() - wall, rate, usage(resource.RUSAGE_SELF)[0] - before, clock.totals()


def per_message(run: Callable[[int], float],
                rounds: int) -> tuple[float, float, float, dict[Thread, tuple[float, float]]]:
    """Medians over ``rounds`` of :func:`measure`'s figures per message (wall and CPU in ms), from LARGE − SMALL
    runs, and of the LARGE runs' GB/s."""
    walls, rates, selfs, threads = [], [], [], defaultdict(list)
    for _ in range(rounds):
        (wall_s, _, self_s, small), (wall_l, rate, self_l, large) = measure(run, SMALL), measure(run, LARGE)
        walls.append((wall_l - wall_s) / (LARGE - SMALL) * 1e3)
        rates.append(rate)
        selfs.append((self_l - self_s) / (LARGE - SMALL) * 1e3)
        for thread in small.keys() | large.keys():
            cpu_s, faults_s = small.get(thread, (0.0, 0))
            cpu_l, faults_l = large.get(thread, (0.0, 0))
            threads[thread].append(((cpu_l - cpu_s) / (LARGE - SMALL) * 1e3, (faults_l - faults_s) / (LARGE - SMALL)))
    medians = {thread: (statistics.median(cpu for cpu, _ in samples), statistics.median(f for _, f in samples))
               for thread, samples in threads.items() if len(samples) == rounds}
    return statistics.median(walls), statistics.median(rates), statistics.median(selfs), medians


def load() -> str:
    return "/".join(f"{figure:.2f}" for figure in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default="raw,direct,1 group,2 groups",
                        help="comma-separated among raw, direct, 1 group, 2 groups")
    args = parser.parse_args()
    runs = itertools.count(1000)
    with tempfile.TemporaryDirectory(prefix="beamstream-buffer-cpu-") as folder_name:
        folder = Path(folder_name)
        rows = {
            "raw": lambda n: bench_baseline(folder, n),
            "direct": lambda n: (lambda run: run.bytes / run.seconds / 1e9)(
                run_stream(folder, "direct", image_spec({"type": "arrays"}, n), 1)),
            "1 group": lambda n: through_buffer(folder, next(runs), n, 1),
            "2 groups": lambda n: through_buffer(folder, next(runs), n, 2),
        }
        print(f"per 8 MiB message ({FRAME_BYTES / 1e6:.1f} MB), marginal between {SMALL} and {LARGE} messages, "
              f"median of {args.rounds} round(s); CPU in ms, faults per message")
        for name in args.rows.split(","):
            before = load()
            wall, rate, own, threads = per_message(rows[name], args.rounds)
            total = sum(cpu for cpu, _ in threads.values())
            print(f"\n{name}: {rate:.2f} GB/s first to last of {LARGE}; marginal wall {wall:.2f} ms/message; CPU "
                  f"{total:.2f} ms/message in all threads; load average {before} before, {load()} after")
            print(f"  {'process':24} {'thread':14} {'CPU ms':>7} {'faults':>7}")
            by_process: dict[str, float] = defaultdict(float)
            for (process, role), (cpu, faults) in sorted(threads.items()):
                by_process[process] += cpu
                if cpu >= 0.005 or faults >= 1:
                    print(f"  {process:24} {role:14} {cpu:7.2f} {faults:7.0f}")
            print("  per process: " + ", ".join(f"{process} {cpu:.2f}" for process, cpu in sorted(by_process.items()))
                  + f"; this process by getrusage {own:.2f}")


if __name__ == "__main__":
    main()
