"""Train a small network to find Bragg peaks in a stream, read with beamstream.torch.StreamDataset.

    .venv/bin/python examples/train_peaks.py                        # its own buffer and producers: seconds on a CPU
    .venv/bin/python examples/train_peaks.py --events 128 --epochs 3 --workers 2
    .venv/bin/python examples/train_peaks.py --endpoint tcp://HOST:5556 --group peaks        # a buffer's stream
    .venv/bin/python examples/train_peaks.py --endpoint http://SERVICE/v1/streams/ID --key-file stream.key

Without --endpoint it starts, in a process of its own, a buffer (spilling to a temporary folder, so later epochs
replay the stream) and producers of simulated 64x64 images with peaks, whose ground truth travels in the
``image_peaks`` field. Epoch 0 reads the stream live, while it is produced; each later epoch replays it from the
buffer as a new consumer group. The network learns a map of where the peaks are (pixels within 1.5 of a peak's
centre) and prints its loss once per epoch, which falls.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from beamstream.buffer.local import LocalBuffer
from beamstream.client import Event
from beamstream.producer import run_local
from beamstream.security.streamkey import read_key_file
from beamstream.spec import parse_spec
from beamstream.torch import StreamDataset

BACKGROUND, SCALE = 10.0, 100.0  # the simulated images' mean background, and a scale that puts peaks near 5
PEAK_RADIUS = 1.5  # pixels of a peak's map around its centre


def peak_map(event: Event) -> torch.Tensor:
    """The target: 1 for the pixels within PEAK_RADIUS of a peak's centre (``image_peaks``: row, column), else 0."""
    rows, cols = event.data["image"].shape
    centres = event.data["image_peaks"][:, -2:]
    grid = np.stack(np.mgrid[:rows, :cols], axis=-1).astype(np.float32)
    distance = np.linalg.norm(grid[None] - centres[:, None, None, :], axis=-1).min(axis=0)
    return torch.from_numpy((distance <= PEAK_RADIUS).astype(np.float32))


def peak_finder() -> nn.Module:
    """A small fully convolutional network: an image in, a logit per pixel out."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 1, 1))


def image_spec(endpoint: str, events: int, size: int) -> object:
    """Simulated ``size``x``size`` images with 5 peaks each, 16 events per message, to ``endpoint``."""
    return parse_spec({
        "source": {"type": "simulated", "n_events": events, "bank_size": 64, "events_per_read": 16,
                   "detectors": [{"kind": "image", "shape": [size, size], "peaks": 5}]},
        "steps": [{"type": "batch", "size": 16}],
        "sinks": [{"type": "stream", "endpoint": endpoint}],
    }, origin="train_peaks")


def serve_stream(folder: str, events: int, size: int, workers: int, done: Any) -> None:
    """The stream's own process: a buffer spilling to ``folder``, fed by ``workers`` producer processes, serving
    until ``done`` is set; exit status 1 if the producers failed."""
    buffer = LocalBuffer(f"ipc://{folder}/in", f"ipc://{folder}/out", spill=Path(folder) / "spill").start()
    try:
        run = run_local(image_spec(f"ipc://{folder}/in", events, size), workers)
        if not run.ok:
            print(f"the producers failed: {run.errors}", file=sys.stderr, flush=True)
        done.wait()
    finally:
        buffer.close()
    sys.exit(0 if run.ok else 1)


@contextmanager
def own_stream(events: int, size: int, workers: int) -> Iterator[str]:
    """A buffer fed by ``workers`` producer processes while the block runs, in a process of its own: the endpoint its
    consumer groups read. RuntimeError if that process failed.

    Not threads of this process: the DataLoader forks its workers from here at each epoch, and a thread that holds
    a lock (an import's, a library's) when another forks leaves it held for ever in the child."""
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="train-peaks-") as folder:
        done = spawn.Event()
        stream = spawn.Process(target=serve_stream, args=(folder, events, size, workers, done), name="stream")
        stream.start()
        try:
            yield f"ipc://{folder}/out"
        finally:
            done.set()
            stream.join()
        if stream.exitcode != 0:
            raise RuntimeError(f"the stream's process failed (exit status {stream.exitcode}): see its errors above")


def train(endpoint: str, group: str, epochs: int, workers: int, batch: int, shuffle: int,
          key: str | None = None) -> list[float]:
    """Train on the stream at ``endpoint`` for ``epochs`` epochs; print and return each epoch's mean loss."""
    torch.manual_seed(0)
    dataset = StreamDataset(endpoint, inputs="image", targets=peak_map, group=group, shuffle=shuffle, key=key)
    loader = dataset.loader(batch_size=batch, num_workers=workers)
    model = peak_finder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_of = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(20.0))
    losses = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        began, total, samples = time.perf_counter(), 0.0, 0
        for images, targets in loader:
            logits = model(((images.float() - BACKGROUND) / SCALE).unsqueeze(1)).squeeze(1)
            loss = loss_of(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(images)
            samples += len(images)
        losses.append(total / samples)
        how = "live" if epoch == 0 else "replayed"
        print(f"epoch {epoch}: loss {losses[-1]:.4f} over {samples} samples ({how}, "
              f"{time.perf_counter() - began:.1f} s)", flush=True)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="read this stream (a buffer's consumers, a service stream's URL) "
                                           "instead of starting a buffer and producers")
    parser.add_argument("--group", default="peaks", help="the consumer group of epoch 0 (default: peaks)")
    parser.add_argument("--key-file", type=Path, help="the stream's key, for a sealed stream")
    parser.add_argument("--events", type=int, default=256, help="images in the stream started (default 256)")
    parser.add_argument("--size", type=int, default=64, help="their side in pixels (default 64)")
    parser.add_argument("--producers", type=int, default=2, help="producer processes started (default 2)")
    parser.add_argument("--epochs", type=int, default=4, help="default 4")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--shuffle", type=int, default=64, help="shuffle buffer per worker (default 64; 0: off)")
    args = parser.parse_args()
    key = read_key_file(args.key_file) if args.key_file else None
    if args.endpoint:
        train(args.endpoint, args.group, args.epochs, args.workers, args.batch, args.shuffle, key)
        return
    with own_stream(args.events, args.size, args.producers) as endpoint:
        train(endpoint, args.group, args.epochs, args.workers, args.batch, args.shuffle)


if __name__ == "__main__":
    main()
