"""Every benchmark, one after the other, and one table of their rows: each with its paired baseline and PASS/FAIL.

    .venv/bin/python benchmarks/all.py            # each at its smallest setting: ~15 minutes on 2 cores
    .venv/bin/python benchmarks/all.py --full     # each at its own defaults (what benchmarks/README.md records)
    .venv/bin/python benchmarks/all.py --only throughput,buffer

Each script runs in its own process, as its own command line would run it (the command is printed); its output is
kept, and its rows (the lines that give a verdict, PASS or FAIL, or a ratio; for a script that prints neither, the
last lines of its table) are gathered at the end, under the script's name. The first five scripts give the rows of issue 24's table: the direct path, the ``hdf5``
serializer and shared memory (throughput), the buffer with one and two groups, NATS and shared memory (buffer), the relay against its paired direct
read and the time from a request to its first event (request_latency). The others are every other benchmark, so
that one command also shows that each still runs. A script that fails (a non-zero exit) is named at the end and
makes this command exit 1; a FAIL row does not (a target missed is a measurement).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
VERDICT = re.compile(r"\b(PASS|FAIL)\b|\d\.\d\d\s*[x×]")  # a row: a verdict, or a ratio
TABLE_LINES = 6  # of a script that prints no verdict and no ratio (a table of rates): its last lines


@dataclass(frozen=True)
class Benchmark:
    """A script and its arguments: ``quick`` its smallest setting, ``full`` what benchmarks/README.md records."""

    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()


BENCHMARKS = (
    Benchmark("throughput.py", ("--only", "baseline,arrays,hdf5,shm", "--workers", "1", "--repeat", "3")),
    Benchmark("buffer.py", ("--quick",), ("--repeat", "3")),
    Benchmark("request_latency.py", ("--repeat", "1", "--images", "50")),
    Benchmark("sealed_throughput.py", ("--quick",)),
    Benchmark("direct_cpu.py", ("--rounds", "1")),
    Benchmark("buffer_cpu.py", ("--rounds", "1")),
    Benchmark("spill_restart.py", ("--gb", "2", "--repeat", "1")),
    Benchmark("training_input.py", ("--repeat", "3")),
    Benchmark("karabo_bridge.py", ("--repeat", "1")),
    Benchmark("viewer_rate.py", ("--quick",)),
    Benchmark("peakfinding.py", ("--repeat", "1", "--images", "8")),
    Benchmark("tof.py", ("--repeat", "1")),
    Benchmark("tof_stream.py", ("--events", "400000")),
    Benchmark("azimuthal.py", ("--repeat", "1", "--frames", "8")),
    Benchmark("psana_ranks.py", ("--events", "2000", "--ranks", "1,3")),
    Benchmark("stage_costs.py", ("--quick",)),
    Benchmark("nats_spread.py", ("--quick",)),
)


@dataclass
class Outcome:
    """What one script gave: its exit status, its rows, its run time and the tail of its output."""

    command: str
    returncode: int
    rows: list[str]
    seconds: float
    tail: str

    @property
    def failed(self) -> bool:
        return self.returncode != 0


def run(benchmark: Benchmark, full: bool, timeout: float) -> Outcome:
    """Run ``benchmark`` with its quick or full arguments; its output passes through as it comes."""
    command = [sys.executable, str(HERE / benchmark.script), *(benchmark.full if full else benchmark.quick)]
    shown = " ".join(["python", f"benchmarks/{benchmark.script}", *command[2:]])
    print(f"\n=== {shown}", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent) as process:
        try:
            for line in process.stdout:
                print(line, end="", flush=True)
                lines.append(line.rstrip())
                if time.monotonic() - started > timeout:
                    process.kill()
                    lines.append(f"(stopped after {timeout:g} s)")
                    break
        finally:
            returncode = process.wait()
    rows = [line.strip() for line in lines if VERDICT.search(line) and not line.startswith(("usage", " ", "pair", "round"))]
    return Outcome(shown, returncode, rows or lines[-TABLE_LINES:], time.monotonic() - started, "\n".join(lines[-5:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="each script at its own defaults (much longer)")
    parser.add_argument("--only", help="comma-separated script names (without .py), in this command's order")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one script may run (default 1800)")
    args = parser.parse_args()
    chosen = BENCHMARKS
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {benchmark.script.removesuffix(".py") for benchmark in BENCHMARKS}
        if unknown:
            parser.error(f"no benchmark {', '.join(sorted(unknown))}; the names: "
                         f"{', '.join(benchmark.script.removesuffix('.py') for benchmark in BENCHMARKS)}")
        chosen = tuple(benchmark for benchmark in BENCHMARKS if benchmark.script.removesuffix(".py") in names)
    outcomes = [run(benchmark, args.full, args.timeout) for benchmark in chosen]
    print("\n" + "=" * 100 + "\nevery row, by script (each with its paired baseline as the script prints it)")
    for outcome in outcomes:
        print(f"\n{outcome.command}  ({outcome.seconds:.0f} s, exit {outcome.returncode})")
        for row in outcome.rows:
            print(f"  {row}")
    failed = [outcome for outcome in outcomes if outcome.failed]
    verdicts = [row for outcome in outcomes for row in outcome.rows]
    print(f"\n{len(outcomes)} scripts ran, {len(failed)} failed; rows with a target: "
          f"{sum('PASS' in row for row in verdicts)} PASS, {sum('FAIL' in row for row in verdicts)} FAIL")
    for outcome in failed:
        print(f"DID NOT RUN THROUGH (exit {outcome.returncode}): {outcome.command}\n{outcome.tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
