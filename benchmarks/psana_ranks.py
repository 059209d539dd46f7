"""Bytes each producer rank reads from a psana run, for N MPI ranks: every rank reading the files (``files:``)
against psana's own MPI distribution (``exp:``, ``run:``, ``dir:``).

    .venv/bin/python benchmarks/psana_ranks.py [--events 20000] [--ranks 1,2,4] [--batch-size 100]

Makes a run with the psana wheel's ``xtcwriter`` (big data: ``xppcspad`` 2×3×6 uint16 images and the test
digitizer, about 0.9 kB an event) and ``smdwriter`` (its small data) in the LCLS-II layout, in a temporary folder,
then streams it for each mode and N with ``mpirun -n N`` into a Client in this process, which must find every
event once (``complete``). Each rank runs this script's rank mode: the path ``beamstream produce`` takes under
mpirun (the source's ``open``, then ``run_mpi``), between two readings of the rank's ``rchar`` in
``/proc/self/io`` (bytes returned by read and pread calls, page cache or not; psana reads its files that way).
psana is imported (in the mode the source needs) before the first reading, so that the import's own reading is
left out; what remains besides the run's files is a rank's fixed cost (Python modules loaded later, psana's
first calls), printed as the ``fixed`` row: the same measure on a run of 10 events.

The table gives each rank's bytes in MB, their sum, and the sum and the largest rank over the run's size (big
data + small data). Under ``files:`` every rank reads the whole run (N×); psana's distribution aims at 1× in all,
the small data read once by rank 0 and each event's big data once by the rank psana gives it to. psana needs
3 ranks or more to share a run out (small-data reader, event builder, big-data ranks): for N = 2 the row says
that the source refused.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

MB = 1e6


def io_read() -> int:
    """Bytes this process has read so far (``rchar`` of /proc/self/io)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def rank_main(spec_path: str, out: str) -> None:
    """One MPI rank: import psana as the source will, then open the source and run this rank's share as
    ``beamstream produce`` does; rank 0 writes every rank's bytes read to ``out`` (JSON)."""
    from mpi4py import MPI

    from beamstream.producer import run_mpi
    from beamstream.sources.psana2 import import_psana
    from beamstream.sources.psana_runs import distributed
    from beamstream.spec import load_spec

    spec = load_spec(Path(spec_path))
    import_psana(distributed(spec.source, os.environ))
    before = io_read()
    spec.source.open()
    result = run_mpi(spec)
    read = MPI.COMM_WORLD.gather(io_read() - before, root=0)
    if result is not None:
        Path(out).write_text(json.dumps({"read": read, "errors": result.errors}))


def make_run(folder: Path, events: int) -> Path:
    """Run 14 of xpptut15 with ``events`` events in ``folder/xtc`` (LCLS-II layout); the xtc folder."""
    programs = Path(importlib.util.find_spec("psana").origin).parent.parent / "bin"  # not imported here
    xtc = folder / "xtc"
    (xtc / "smalldata").mkdir(parents=True)
    big = xtc / "xpptut15-r0014-s000-c000.xtc2"
    small = xtc / "smalldata" / big.name.replace(".xtc2", ".smd.xtc2")
    for program, arguments in (("xtcwriter", ["-f", big, "-n", events]), ("smdwriter", ["-f", big, "-o", small])):
        path = programs / program
        path.chmod(path.stat().st_mode | 0o100)
        subprocess.run([str(path), *map(str, arguments)], check=True, capture_output=True)
    return xtc


def measure(source: dict, ranks: int, folder: Path, batch: int) -> dict:
    """Stream ``source`` with ``ranks`` MPI ranks into a Client here: each rank's bytes read, the events that
    arrived, and whether the stream is complete."""
    from beamstream.client import Client
    from beamstream.errors import StreamTimeout

    endpoint = f"ipc://{folder / 'stream'}"
    spec, out = folder / "spec.yaml", folder / "read.json"
    out.unlink(missing_ok=True)
    spec.write_text(yaml.safe_dump({"source": {"type": "psana2", "fields": {"image": "xppcspad.raw.raw"}, **source},
                                    "steps": [{"type": "batch", "size": batch}],
                                    "sinks": [{"type": "stream", "endpoint": endpoint}]}))
    command = [str(Path(sys.executable).parent / "mpirun"), "-n", str(ranks), sys.executable, __file__,
               "--rank", str(spec), str(out)]
    environment = {name: value for name, value in os.environ.items() if name != "PS_PARALLEL"}
    outcome: dict = {}
    with Client(endpoint, bind=True, timeout=120) as client:
        runner = threading.Thread(target=lambda: outcome.setdefault(
            "run", subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)))
        runner.start()
        try:
            events = sum(len(message.seq) for message in client.messages())
        except StreamTimeout:  # the ranks' output says why
            events = None
        runner.join()
    report = json.loads(out.read_text()) if outcome["run"].returncode == 0 and out.exists() else {}
    if events is None or not report or report["errors"]:
        raise SystemExit(f"mpirun -n {ranks} failed ({report or 'no report'}, {events} events):\n"
                         f"{outcome['run'].stderr[-3000:]}")
    return report | {"events": events, "complete": client.report.complete}


def refusal(source: dict, ranks: int) -> str | None:
    """Why the source refuses to run with ``ranks`` MPI ranks (its own rule), or None."""
    from beamstream.errors import SourceError
    from beamstream.sources.psana2 import Psana2Source
    from beamstream.sources.psana_runs import distributed

    try:
        distributed(Psana2Source(**source, fields={"image": "xppcspad.raw.raw"}), {"PMI_RANK": "0",
                                                                                   "PMI_SIZE": str(ranks)})
    except SourceError as exc:
        return str(exc)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts")
    parser.add_argument("--batch-size", type=int, default=100, help="psana's batch_size (events per batch a "
                        "big-data rank is sent); also beamstream's batch step")
    parser.add_argument("--rank", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        rank_main(*args.rank)
        return
    ranks = [int(n) for n in args.ranks.split(",")]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        run = make_run(folder / "run", args.events)
        big, small = (sum(path.stat().st_size for path in place.glob("*.xtc2")) for place in (run, run / "smalldata"))
        size = big + small
        tiny = make_run(folder / "tiny", 10)
        print(f"run: {args.events} events, {size / MB:.2f} MB (big data {big / MB:.2f} + small data "
              f"{small / MB:.2f}); load {os.getloadavg()[0]:.2f}")
        print(f"{'mode':<16}{'N':>3}  {'MB read per rank':<40}{'sum MB':>9}{'sum/run':>9}{'max/run':>9}  events")
        for mode in ("files", "exp/run/dir"):
            for n in ranks:
                rows = []
                for where in (run, tiny):
                    source = ({"files": [str(next(where.glob("*.xtc2")))]} if mode == "files" else
                              {"exp": "xpptut15", "run": 14, "dir": str(where), "batch_size": args.batch_size})
                    rows.append(None if refusal(source, n) else measure(source, n, folder, args.batch_size))
                if rows[0] is None:
                    print(f"{mode:<16}{n:>3}  refused: {refusal(source, n)}")
                    continue
                (whole, fixed), events = rows, (args.events, 10)
                read = [value / MB for value in whole["read"]]
                state = ["complete" if row["complete"] and row["events"] == count else "INCOMPLETE"
                         for row, count in zip(rows, events)]
                print(f"{mode:<16}{n:>3}  {' '.join(f'{value:.2f}' for value in read):<40}{sum(read):>9.2f}"
                      f"{sum(read) * MB / size:>9.2f}{max(read) * MB / size:>9.2f}  {whole['events']} {state[0]}")
                print(f"{'  fixed':<16}{n:>3}  {' '.join(f'{value / MB:.2f}' for value in fixed['read']):<40}"
                      f"{'':>27}  {fixed['events']} {state[1]}")


if __name__ == "__main__":
    main()
