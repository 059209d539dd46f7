"""Peak finding speed: images per second per core of the ``peakfinder8`` step on 1024×1024 frames, and its ratio
to OnDA's peakfinder8 (``ondamonitor``) on the same frames where a venv with it exists.

    python benchmarks/peakfinding.py                   # 5 pairs of runs of 64 images: about a minute on 2 cores
    python benchmarks/peakfinding.py --repeat 3 --images 32
    python benchmarks/peakfinding.py --onda-python /tmp/beamstream-ondamonitor-venv/bin/python

Both finders search the same simulated frames (uint16, 10 peaks each, the ``simulated`` source's defaults) with
the step's default settings, one frame after the other in one process; a rate is images per CPU second of that
process (``time.process_time``), so it is per core and less sensitive to other load than wall time. Pairs of runs
alternate which finder goes first. OnDA's needs numpy<2 and so runs in its own venv (make one with
``python -m venv V && V/bin/pip install ondamonitor 'numpy<2'``; tests/test_crystallography.py makes
``/tmp/beamstream-ondamonitor-venv``); without it only beamstream's rate is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from beamstream.sources.simulated import SimulatedSource
from beamstream.steps.peakfinder import Peakfinder8Step

TARGET = 50.0  # images/s per core
DEFAULT_ONDA = Path(tempfile.gettempdir()) / "beamstream-ondamonitor-venv" / "bin" / "python"
ONDA_RUN = """
import json, sys, time
import numpy as np
from om.algorithms.crystallography import Peakfinder8PeakDetection
frames, count = np.load(sys.argv[1]), int(sys.argv[2])
rows, cols = frames.shape[1:]
rr, cc = np.ogrid[:rows, :cols]
finder = Peakfinder8PeakDetection(
    radius_pixel_map=np.hypot(rr - (rows - 1) / 2, cc - (cols - 1) / 2).astype(np.float32),
    layout_info={"asic_nx": cols, "asic_ny": rows, "nasics_x": 1, "nasics_y": 1},
    crystallography_parameters={"max_num_peaks": 2048, "adc_threshold": 100.0, "minimum_snr": 6.0,
                                "min_pixel_count": 2, "max_pixel_count": 200, "local_bg_radius": 3, "min_res": 0,
                                "max_res": 10**6, "bad_pixel_map_filename": None, "bad_pixel_map_hdf5_path": None})
finder.find_peaks(data=frames[0])
start = time.process_time()
found = sum(len(finder.find_peaks(data=frames[i % len(frames)])["fs"]) for i in range(count))
print(json.dumps({"rate": count / (time.process_time() - start), "peaks": found}))
"""


def beamstream_rate(frames: np.ndarray, count: int) -> tuple[float, int]:
    """(images per CPU second, peaks found) of the step's finder over ``count`` images cycling through ``frames``."""
    finder = Peakfinder8Step().finder()
    finder.find(frames[:1])
    start = time.process_time()
    found = sum(int(finder.find(frames[i % len(frames)][None])["image_npeaks"][0]) for i in range(count))
    return count / (time.process_time() - start), found


def onda_rate(python: Path, frames_file: Path, count: int) -> tuple[float, int]:
    """The same for OnDA's finder, run by ``python`` (a venv with ondamonitor)."""
    run = subprocess.run([str(python), "-c", ONDA_RUN, str(frames_file), str(count)], capture_output=True, text=True,
                         check=True, timeout=600)
    result = json.loads(run.stdout)
    return result["rate"], result["peaks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="pairs of runs")
    parser.add_argument("--images", type=int, default=64, help="images per run")
    parser.add_argument("--onda-python", type=Path, default=DEFAULT_ONDA, help="python of a venv with ondamonitor")
    args = parser.parse_args()
    frames = SimulatedSource(bank_size=16).open().bank()["image"]
    onda = args.onda_python if args.onda_python.exists() else None
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        frames_file = Path(folder) / "frames.npy"
        np.save(frames_file, frames)
        for pair in range(args.repeat):
            order = ["beamstream", "onda"] if pair % 2 == 0 else ["onda", "beamstream"]
            for who in order:
                if who == "beamstream":
                    rate, peaks = beamstream_rate(frames, args.images)
                    ours.append(rate)
                elif onda is not None:
                    rate, peaks = onda_rate(onda, frames_file, args.images)
                    theirs.append(rate)
                else:
                    continue
                print(f"pair {pair + 1}: {who:<10} {rate:6.1f} images/s per core ({peaks / args.images:.1f} peaks "
                      "an image)")
    median = statistics.median(ours)
    verdict = "PASS" if median >= TARGET else "FAIL"
    print(f"frames   : {len(frames)} simulated 1024x1024 uint16 frames, 10 peaks each, {args.images} images a run")
    print(f"peakfinder8 step (psana)   {median:6.1f} images/s per core  target >= {TARGET:g}  {verdict}  "
          f"(runs {', '.join(f'{r:.1f}' for r in ours)})")
    if not theirs:
        print(f"OnDA reference             not run: no python with ondamonitor at {args.onda_python}")
        return
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(f"OnDA peakfinder8           {statistics.median(theirs):6.1f} images/s per core  "
          f"(runs {', '.join(f'{r:.1f}' for r in theirs)})")
    print(f"ratio step/OnDA            {statistics.median(ratios):6.2f}x  (runs {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
