"""The azimuthal step's speed on one core: frames/s for 1024×1024 images, and its overhead over pyFAI alone.

    .venv/bin/python benchmarks/azimuthal.py                  # 64 frames, 5 runs per row, csr and histogram
    .venv/bin/python benchmarks/azimuthal.py --frames 16 --repeat 3 --methods csr

The frames are the simulated source's (float32, 10 Bragg-like peaks on Gaussian noise), 1000 bins
in q (nm⁻¹). One thread: ``OMP_NUM_THREADS=1`` is set before numpy and pyFAI load; rates are
frames per CPU second of this process (``time.process_time``), so other load on the machine
slows them less than wall-clock rates. For each
engine, rows alternate: the step (``AzimuthalIntegration.apply`` on one batch of all the frames)
and pyFAI called directly on the same frames with the same integrator options
(``integrate1d`` per frame). The step gets the frames read-only, as sources and clients give them,
and copies each one for pyFAI (whose engines take writable buffers only); pyFAI alone gets writable
frames; each rate is the median of ``--repeat`` runs, and the overhead is
the median over the pairs of runs of 1 − step rate / pyFAI rate (what the step adds: the profile
tables, the batch). On a shared machine single runs vary by tens of percent: read the pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from beamstream.batch import Batch  # noqa: E402
from beamstream.sources.simulated import ImageDetector  # noqa: E402
from beamstream.steps.azimuthal import AzimuthalStep  # noqa: E402

SHAPE = (1024, 1024)
NPT = 1000


def timed(run, frames: int) -> float:
    start = time.process_time()
    run()
    return frames / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64, help="frames per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per row")
    parser.add_argument("--methods", default="csr,histogram", help="engines to measure, comma-separated")
    args = parser.parse_args()
    detector = ImageDetector(shape=list(SHAPE), dtype="float32")
    bank = [detector.draw(np.random.default_rng([0, index]))["image"] for index in range(min(args.frames, 8))]
    writable = np.stack([bank[index % len(bank)] for index in range(args.frames)])
    images = writable.copy()
    images.setflags(write=False)  # as sources and clients hand frames to steps
    batch = Batch(np.arange(args.frames), np.zeros(args.frames), {"image": images})
    print(f"{args.frames} frames of {SHAPE[0]}×{SHAPE[1]} float32, {NPT} bins, one core, median of {args.repeat} runs")
    print(f"{'engine':<11}{'step frames/s':>15}{'pyFAI frames/s':>16}{'overhead':>10}")
    for method in args.methods.split(","):
        step = AzimuthalStep(field="image", npt=NPT, method=method, distance=0.1, pixel_size=(75e-6, 75e-6),
                             energy=9500.0).build()
        step.apply(batch.slice(0, 1))  # makes the integrator and pyFAI's engine, as the first batch of a stream does
        direct, ours = [], []
        for _ in range(args.repeat):
            ours.append(timed(lambda: step.apply(batch), args.frames))
            direct.append(timed(lambda: [step.integrate(frame) for frame in writable], args.frames))
        overhead = statistics.median(1 - a / b for a, b in zip(ours, direct, strict=True))
        pairs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(ours, direct, strict=True))
        print(f"{method:<11}{statistics.median(ours):>15,.1f}{statistics.median(direct):>16,.1f}{overhead:>10.1%}"
              f"  [{pairs}]")


if __name__ == "__main__":
    main()
