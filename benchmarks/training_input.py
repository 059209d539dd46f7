"""Samples/s into a PyTorch training loop: from a stream (a buffer) against the same data in local HDF5 files.

    .venv/bin/python benchmarks/training_input.py                  # 4096 images of 256×256 uint16, 5 pairs: ~40 s
    .venv/bin/python benchmarks/training_input.py --images 4096 --size 512 --workers 2 --batch 64 --repeat 5

One producer run (``run_local``) of simulated images (``--per-message`` events per message, ``arrays``) writes
the same events twice: to a ``beamstream buffer`` process (its own process, in memory) through the ``stream``
sink, and into one CXI file per producer worker (``files`` sink, ``layout: cxi``, uncompressed, chunked one
frame per chunk) in a temporary folder, so just written and in the page cache. Then pairs of runs, alternating
which goes first, each over every image with the same DataLoader settings (``--batch``, ``--workers``,
``in_order=False``, no shuffling):
  files   a map-style Dataset over the CXI files with h5py (each worker opens them itself), ``dataset[i]``
          one image as a tensor: the usual way to train from files.
  stream  beamstream.torch.StreamDataset reading the buffer as a new consumer group per run (a replay):
          ``inputs="image"``, each sample a view of its received message.
The loop body does nothing but count samples, so the rate is what the input pipeline delivers. A rate counts
from the first batch to the last (worker start-up, the same for both, is left out): samples after the first
batch / (t_last - t_first). Each run's CPU time per sample is also printed: this process's, its DataLoader
workers' and the buffer process's (which serves only the stream), over the whole pass (worker start-up
included, the same for both); on a shared machine it varies less than the rates. Printed: each pair, the
median rates and CPU times, and the median of the per-pair ratios stream/files (target >= 1.0).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import psutil
import torch
from torch.utils.data import DataLoader, Dataset

from beamstream.producer import run_local
from beamstream.spec import parse_spec
from beamstream.torch import StreamDataset

BEAMSTREAM = [sys.executable, "-m", "beamstream.cli"]
CXI_IMAGES = "/entry_1/data_1/image"  # where the cxi layout keeps the field ``image``


class H5Images(Dataset):
    """The images of ``paths`` (CXI files), in file order; each worker opens the files itself, at first use."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.counts = []
        for path in paths:
            with h5py.File(path, "r") as h5:
                self.counts.append(len(h5[CXI_IMAGES]))
        self.datasets: list[h5py.Dataset] | None = None

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.datasets is None:
            self.datasets = [h5py.File(path, "r")[CXI_IMAGES] for path in self.paths]
        for count, dataset in zip(self.counts, self.datasets, strict=True):
            if index < count:
                return torch.from_numpy(dataset[index])
            index -= count
        raise IndexError(index)


def cpu_seconds(buffer: psutil.Process) -> float:
    """CPU time so far of this process, its children waited for (the DataLoader's workers, once joined), and
    ``buffer``."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    times = buffer.cpu_times()
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + times.user + times.system


def rate(loader: DataLoader, buffer: psutil.Process) -> tuple[float, int, float]:
    """Samples/s over ``loader`` from its first batch to its last, the samples it gave in all, and the CPU time
    per sample (µs) of the whole pass (its workers' and the buffer's included)."""
    first = last = None
    total = after_first = 0
    cpu = cpu_seconds(buffer)
    for images in loader:
        last = time.perf_counter()
        total += len(images)
        if first is None:
            first = last
        else:
            after_first += len(images)
    del images  # the iterator has joined its workers once exhausted; their CPU time is counted now
    return after_first / (last - first), total, (cpu_seconds(buffer) - cpu) / total * 1e6


def produce(folder: Path, images: int, size: int, per_message: int, producers: int, scheme: str) -> list[Path]:
    """Stream ``images`` simulated images to the buffer at ``folder/in`` (over ``scheme``: ipc, or shm with an arena
    twice the stream, so that the buffer keeps all of it for the replays) and into CXI files; the files."""
    shared = {"shm_bytes": 2 * images * size**2 * 2 + (64 << 20)} if scheme == "shm" else {}
    spec = parse_spec({
        "source": {"type": "simulated", "n_events": images, "bank_size": 16, "events_per_read": per_message,
                   "detectors": [{"kind": "image", "shape": [size, size], "peaks": 10}]},
        "steps": [{"type": "batch", "size": per_message}],
        "serializer": {"type": "arrays"},
        "sinks": [{"type": "stream", "endpoint": f"{scheme}://{folder}/in", **shared},
                  {"type": "files", "dir": str(folder / "files"), "layout": "cxi"}],
    }, origin="training_input")
    result = run_local(spec, producers)
    if not result.ok:
        raise SystemExit(f"the producers failed: {result.errors}")
    return sorted((folder / "files").glob("*.cxi"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096,
                        help="images in the stream (default 4096: a pass of 1024 lasts 0.2 s, and one scheduler pause "
                             "on a shared machine moved its rate by a third)")
    parser.add_argument("--size", type=int, default=256, help="their side, uint16 pixels (default 256: 128 KiB)")
    parser.add_argument("--per-message", type=int, default=16, help="events per message (default 16)")
    parser.add_argument("--producers", type=int, default=1, help="producer workers, and files (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--repeat", type=int, default=5, help="pairs of runs (default 5)")
    parser.add_argument("--scheme", choices=("ipc", "shm"), default="ipc",
                        help="the stream's endpoints: ipc (default) or shm (payloads in shared memory)")
    args = parser.parse_args()
    megabytes = args.images * args.size**2 * 2 / 2**20
    print(f"{args.images} images of {args.size}×{args.size} uint16 ({megabytes:.0f} MiB) over {args.scheme}://, "
          f"{args.per_message} per "
          f"message; DataLoader batch_size={args.batch}, num_workers={args.workers}, in_order=False; "
          f"{args.repeat} pairs")
    with tempfile.TemporaryDirectory(prefix="beamstream-training-bench-") as tmp:
        folder = Path(tmp)
        buffer = subprocess.Popen([*BEAMSTREAM, "buffer", "--producer-endpoint", f"{args.scheme}://{folder}/in",
                                   "--consumer-endpoint", f"{args.scheme}://{folder}/out",
                                   "--max-memory", f"{int(megabytes) + 64}MiB"], stderr=subprocess.DEVNULL)
        try:
            files = H5Images(produce(folder, args.images, args.size, args.per_message, args.producers, args.scheme))
            stream = StreamDataset(f"{args.scheme}://{folder}/out", inputs="image", group="bench")
            options = {"batch_size": args.batch, "num_workers": args.workers, "in_order": False}
            rates: dict[str, list[float]] = {"files": [], "stream": []}
            cpu: dict[str, list[float]] = {"files": [], "stream": []}
            for run in range(args.repeat):
                stream.set_epoch(run)
                loaders = {"files": DataLoader(files, **options), "stream": stream.loader(**options)}
                order = ["files", "stream"] if run % 2 == 0 else ["stream", "files"]
                for name in order:
                    measured, total, per_sample = rate(loaders[name], psutil.Process(buffer.pid))
                    if total != args.images:
                        raise SystemExit(f"{name} gave {total} images, not {args.images}")
                    rates[name].append(measured)
                    cpu[name].append(per_sample)
                print(f"pair {run + 1} ({', '.join(order)}): files {rates['files'][-1]:,.0f} samples/s, "
                      f"stream {rates['stream'][-1]:,.0f} samples/s, ratio "
                      f"{rates['stream'][-1] / rates['files'][-1]:.2f}×; CPU per sample: files "
                      f"{cpu['files'][-1]:.0f} µs, stream {cpu['stream'][-1]:.0f} µs", flush=True)
        finally:
            buffer.terminate()
            buffer.wait(30)
    ratio = statistics.median(s / f for s, f in zip(rates["stream"], rates["files"], strict=True))
    for name, label in (("files", "files  (h5py Dataset)  "), ("stream", "stream (StreamDataset) ")):
        print(f"{label} {statistics.median(rates[name]):10,.0f} samples/s  "
              f"(CPU {statistics.median(cpu[name]):.0f} µs per sample)")
    print(f"ratio stream/files      {ratio:10.2f}×  target >= 1.0  {'PASS' if ratio >= 1.0 else 'FAIL'}")


if __name__ == "__main__":
    main()
